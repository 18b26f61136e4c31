"""The shared patching helpers: wrap and unwrap by identity, subclass hooks."""

from __future__ import annotations

from sop_telemetry.integrations.patching import Patcher, is_ours, subclasses


def counting(calls):
    def factory(original):
        def wrapper(self, *args, **kwargs):
            calls.append(type(self).__name__)
            return original(self, *args, **kwargs)

        return wrapper

    return factory


def test_wrap_and_undo_restore_the_very_objects():
    class Base:
        def run(self, x):
            """Runs."""
            return x + 1

    class Child(Base):
        pass

    original = vars(Base)["run"]
    calls = []
    patches = Patcher("test")
    for cls in subclasses(Base):
        patches.wrap(cls, "run", counting(calls))
    assert is_ours(vars(Base)["run"]) and "run" not in vars(Child)  # only where the class defines it
    assert Base.run.__wrapped__ is original and Base.run.__doc__ == "Runs."
    assert Child().run(1) == 2 and calls == ["Child"]
    assert patches.wrap(Base, "run", counting(calls)) is False  # never twice
    patches.undo()
    assert vars(Base)["run"] is original and not patches.patched


def test_undo_leaves_a_layer_someone_put_on_top():
    class Base:
        def run(self):
            return 1

    patches = Patcher("test")
    patches.wrap(Base, "run", counting([]))
    theirs = lambda self: 2  # noqa: E731
    Base.run = theirs
    patches.undo()
    assert vars(Base)["run"] is theirs


def test_subclasses_defined_later_are_hooked_until_undo():
    class Base:
        def run(self):
            return "base"

    calls = []
    patches = Patcher("test")
    factory = counting(calls)
    patches.hook_subclasses(Base, lambda cls: patches.wrap(cls, "run", factory))

    class Later(Base):
        def run(self):
            return "later"

    assert is_ours(vars(Later)["run"]) and Later().run() == "later" and calls == ["Later"]
    patches.undo()
    assert "__init_subclass__" not in vars(Base) and not is_ours(vars(Later)["run"])

    class AfterUndo(Base):
        def run(self):
            return "after"

    assert not is_ours(vars(AfterUndo)["run"])


def test_a_failing_subclass_hook_does_not_stop_the_class_statement():
    class Base:
        pass

    patches = Patcher("test")
    patches.hook_subclasses(Base, lambda cls: 1 / 0)

    class Child(Base):
        pass

    assert issubclass(Child, Base)
    patches.undo()
