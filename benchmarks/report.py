"""Turns the figures into the printed tables and the target verdicts.

Usage::

    from benchmarks.report import targets, render
    print(render(results))          # every section's table, then the targets: measured, target, PASS/FAIL
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

Row = Sequence[str]


def table(title: str, header: Row, rows: List[Row]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)] if rows else [len(h) for h in header]
    line = lambda cells: "  ".join(  # noqa: E731 - a local formatter
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    out = [title, line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _f(value: Optional[float], digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def targets(r: Dict[str, Any]) -> List[Tuple[str, str, str, Optional[bool]]]:
    """(what, measured, target, passed or None when not measured) for every target of the issue."""
    out: List[Tuple[str, str, str, Optional[bool]]] = []
    for kind, label in (("agent_tool_calling", "ToolCallingAgent"), ("agent_code", "CodeAgent")):
        a = r.get(kind)
        if not a:
            continue
        cpu, wall = a["cpu"], a["wall"]
        # Both ways a run can end: within the writer's pause after the last write (runs back to back), or with the
        # writer idle, woken by the run's end.
        for name, how in (("sop", "runs back to back"), ("sop_idle", "writer idle at the run's end")):
            if name not in cpu["setups"]:
                continue
            sop, sop_wall = cpu["setups"][name], wall["setups"][name]
            out.append((f"{label} run overhead, sop_telemetry enabled, {how} (CPU time)",
                        f"{_f(sop['added_pct'])}% (+{_f(sop['added_ms'], 3)} ms; wall {_f(sop_wall['added_pct'])}%)",
                        "<= 2%", sop["added_pct"] <= 2.0))
        ratio = cpu.get("openinference_over_sop")
        if "openinference" not in cpu["setups"]:
            out.append((f"{label}: OpenInference added / sop_telemetry added", "skipped", ">= 20x", None))
        elif ratio is None:
            out.append((f"{label}: OpenInference added / sop_telemetry added", "sop adds nothing measurable",
                        ">= 20x", True))
        else:
            cons = cpu.get("openinference_over_sop_conservative")
            out.append((f"{label}: OpenInference added / sop_telemetry added (CPU)",
                        f"{_f(ratio, 1)}x (conservative {_f(cons, 1)}x; wall "
                        f"{_f(wall.get('openinference_over_sop'), 1)}x)", ">= 20x", ratio >= 20.0))
    ins = r.get("instructions")
    if ins and ins.get("skipped"):
        out.append(("agent run overhead in instructions (callgrind)", f"skipped: {ins['skipped']}", "<= 2%", None))
    elif ins and ins.get("counted"):
        for kind, label in (("tool_calling", "ToolCallingAgent"), ("code", "CodeAgent")):
            k = ins.get(kind)
            if not k:
                continue
            base, sop = k["setups"]["none"], k["setups"]["sop"]
            out.append((f"{label} run overhead, sop_telemetry enabled (instructions on the agent's thread)",
                        f"{_f(sop['added_pct'])}% (+{_f(sop['added'], 0)} of {_f(base['per_run'], 0)})", "<= 2%",
                        sop["added_pct"] <= 2.0))
            ratio = k.get("openinference_over_sop")
            if ratio is not None:
                out.append((f"{label}: OpenInference added / sop_telemetry added (instructions)", f"{_f(ratio, 1)}x",
                            ">= 20x", ratio >= 20.0))
    calls = r.get("per_call")
    if calls:
        for name, label in (("model_generate", "model generate"), ("tool_call", "tool call"),
                            ("agent_run", "agent run"), ("finalize_step", "step")):
            c = calls[name]
            # What the call adds to its caller; the building of its record, later and usually on the writer
            # thread, is shown beside it (and counted in section 1's "+ its file write").
            out.append((f"per call, enabled ({label}), added to the call (its record built later)",
                        f"{_f(c['enabled_added_us'])} µs (+ {_f(c['built_later_us'])} µs)",
                        "<= 5 µs", c["enabled_added_us"] <= 5.0))
        for name, label in (("model_generate", "model generate"), ("tool_call", "tool call"),
                            ("agent_run", "agent run"), ("finalize_step", "step")):
            c = calls[name]
            out.append((f"per call, disabled ({label}), above the wrapt floor", f"{_f(c['disabled_over_floor_us'])} µs",
                        "<= 1 µs", c["disabled_over_floor_us"] <= 1.0))
    flush = r.get("flush")
    if flush:
        big = flush.get("10000")
        if big:
            out.append(("flush of a 10,000-record session (each write after the first)", f"{_f(big['flush_ms'], 1)} ms",
                        "< 100 ms", big["flush_ms"] < 100.0))
            out.append(("flush of a 10,000-record session, first write (nothing cached)",
                        f"{_f(big['flush_cold_ms'], 1)} ms", "< 100 ms", big["flush_cold_ms"] < 100.0))
        else:
            out.append(("flush of a 10,000-record session", "not run (--quick)", "< 100 ms", None))
        wt = flush["write_thread"]
        out.append(("session written off the agent's thread", f"{wt['thread']}", "not the agent's thread",
                    bool(wt["off_agent_thread"])))
    mem = r.get("memory")
    if mem:
        per = mem["per_record"]["bytes_per_record"]
        queued = mem["per_record"].get("bytes_per_queued_event", 0.0)
        out.append(("memory held per recorded call (as a record / while queued)", f"{_f(per, 0)} B / {_f(queued, 0)} B",
                    "< 1 KB (1024 B)", max(per, queued) < 1024))
        cap = mem["capped"]
        out.append((f"{cap['calls']:,}-call task: caps hold, drops counted",
                    f"kept {cap['kept']}, peak {_f(cap['peak_mb'], 1)} MB", "kept <= cap, drops counted",
                    bool(cap["drops_counted"]) and all(v <= cap["max_records_per_task"] for v in cap["kept"].values())))
    imp = r.get("imports")
    if imp:
        out.append(("import sop_telemetry (-X importtime, cumulative)", f"{_f(imp['importtime_ms'])} ms", "< 30 ms",
                    imp["importtime_ms"] < 30.0))
        out.append(("import sop_telemetry loads smolagents / wrapt / pydantic",
                    ", ".join(imp["heavy_modules_loaded"]) or "none of them", "no smolagents",
                    not imp["imports_smolagents"]))
    ses = r.get("sessions")
    if ses:
        if "cli_list_ms" in ses:
            out.append((f"`sop-telemetry list` over {ses['sessions']:,} sessions", f"{_f(ses['cli_list_ms'], 0)} ms",
                        "< 1 s", ses["cli_list_ms"] < 1000.0))
        else:
            out.append((f"`sop-telemetry list` over {ses['sessions']:,} sessions", "skipped", "< 1 s", None))
    pa = r.get("pydantic_ai")
    if pa:
        native = pa["cpu"]["setups"]["native"]
        for name, how in (("sop", "file written after the run"), ("sop_idle", "writer idle at the run's end")):
            sop, sop_wall = pa["cpu"]["setups"][name], pa["wall"]["setups"][name]
            out.append((f"pydantic-ai run overhead, sop_telemetry enabled, {how} (CPU time)",
                        f"{_f(sop['added_pct'])}% (+{_f(sop['added_ms'], 3)} ms; wall {_f(sop_wall['added_pct'])}%)",
                        "<= 2%", sop["added_pct"] <= 2.0))
        ins = r.get("pydantic_ai_instructions")
        if ins and ins.get("counted"):
            for name, how in (("sop", "the run itself"), ("sop_with_write", "with its file write")):
                c = ins["setups"][name]
                out.append((f"pydantic-ai run overhead, sop_telemetry enabled, {how} (instructions, every thread)",
                            f"{_f(c['added_pct'])}% (+{c['added']:,.0f})", "<= 2%" if name == "sop" else "-",
                            c["added_pct"] <= 2.0 if name == "sop" else None))
        ratio = native.get("over_sop")
        out.append(("pydantic-ai: its own OpenTelemetry instrumentation added / sop_telemetry added (CPU)",
                    "sop adds nothing measurable" if ratio is None else f"{_f(ratio, 1)}x "
                    f"(+{_f(native['added_ms'], 3)} ms, {_f(native['added_pct'], 1)}%)", "well above 1x",
                    ratio is None or ratio >= 5.0))
    from .langgraph_run import targets as langgraph_targets

    out.extend(langgraph_targets(r))
    out.extend(_long_running_targets(r.get("long_running")))
    return out


def _long_running_targets(lr: Optional[Dict[str, Any]]) -> List[Tuple[str, str, str, Optional[bool]]]:
    if not lr:
        return []
    out: List[Tuple[str, str, str, Optional[bool]]] = []
    for row in lr["rows"]:
        what = f"{row['tasks']:,} {row['kind']} tasks in one process"
        ratio = row["end_over_start"]
        out.append((f"{what}: added CPU per task, end / start",
                    f"{_f(row['added_cpu_end_us'], 0)} / {_f(row['added_cpu_start_us'], 0)} us = {_f(ratio)}",
                    "<= 1.20", None if ratio is None else ratio <= 1.2))
        out.append((f"{what}: bytes written / bytes on disk", _f(row["written_over_on_disk"]), "<= 3",
                    row["written_over_on_disk"] is not None and row["written_over_on_disk"] <= 3.0))
        out.append((f"{what}: every task on disk exactly once", f"{row['tasks_on_disk']:,} in {row['files']} files",
                    "all, once", bool(row["exactly_once"])))
        largest = f"{row['largest_file_bytes'] / 1e6:.1f} MB file"
        show, report = row["show_s"], row["report_largest_s"]
        out.append((f"{what}: show / report on the largest ({largest}), CPU time",
                    f"{_f(show['cpu'])} / {_f(report['cpu'])} s (wall {_f(show['wall'])} / {_f(report['wall'])})",
                    "< 1 s", max(show["cpu"], report["cpu"]) < 1.0))
    for kind, g in lr.get("rss_growth", {}).items():
        small, large = g["added_mb"]
        out.append((f"{kind}: peak RSS over telemetry-off, {g['tasks'][0]:,} -> {g['tasks'][1]:,} tasks",
                    f"+{_f(small, 0)} -> +{_f(large, 0)} MB", "no growth with N (<= 1.25x + 5 MB)",
                    large <= 1.25 * max(small, 0.0) + 5.0))
    return out


def render(r: Dict[str, Any]) -> str:
    parts: List[str] = []
    meta = r.get("meta", {})
    parts.append(f"sop_telemetry benchmarks ({meta.get('mode', '?')}): python {meta.get('python')}, "
                 f"smolagents {meta.get('smolagents')}, {meta.get('cpus')} CPUs, {meta.get('platform')}")
    names = {"none": "no telemetry", "minimal_hooks": "minimal timing hooks",
             "sop": "sop_telemetry enabled (runs back to back)",
             "sop_idle": "sop_telemetry enabled, writer idle at the run's end",
             "sop_unwritten": "sop_telemetry enabled, never written (diagnostic)",
             "sop_with_write": "sop_telemetry enabled + its file write", "sop_disabled": "sop_telemetry disabled",
             "openinference": "OpenInference (SimpleSpanProcessor)",
             "openinference_batch": "OpenInference (BatchSpanProcessor)"}
    for kind, label in (("agent_tool_calling", "ToolCallingAgent"), ("agent_code", "CodeAgent")):
        a = r.get(kind)
        if not a:
            continue
        rows = []
        for name, c in a["cpu"]["setups"].items():
            w = a["wall"]["setups"][name]
            if name == "none":
                rows.append([names[name], _f(w["median_ms"]), _f(c["median_ms"]), "-", "-", "-", "-", "-", "-"])
            else:
                rows.append([names[name], _f(w["median_ms"]), _f(c["median_ms"]), _f(c["added_ms"], 3),
                             f"{_f(c['added_ms_ci95'][0], 3)} to {_f(c['added_ms_ci95'][1], 3)}",
                             _f(c["added_ms_trimmed_mean"], 3), f"{_f(c['added_pct'], 1)}%", _f(w["added_ms"], 3),
                             f"{_f(w['added_pct'], 1)}%"])
        what = "20 tool calls + final answer" if kind == "agent_tool_calling" else "20 code steps calling a tool + final answer"
        parts.append(table(f"\n1. Agent run: {label}, {what}; {a['runs']} interleaved samples per setup (each the "
                           f"fastest of {a.get('repeats', 1)} runs; OpenInference every "
                           f"{a.get('openinference_every', 1)} iterations)",
                           ["setup", "wall ms", "CPU ms", "+CPU ms (median)", "95% interval", "+CPU ms (trim. mean)",
                            "+CPU %", "+wall ms (median)", "+wall %"], rows))
        notes = []
        for name in ("openinference", "openinference_batch"):
            ratio = a["cpu"].get(f"{name}_over_sop")
            if ratio is not None:
                notes.append(f"{names[name]} adds {_f(ratio, 1)}x the CPU time sop_telemetry adds "
                             f"(conservative: {_f(a['cpu'].get(f'{name}_over_sop_conservative'), 1)}x; "
                             f"wall: {_f(a['wall'].get(f'{name}_over_sop'), 1)}x)")
        if a.get("openinference_skipped"):
            notes.append(a["openinference_skipped"])
        rec = a.get("recorded", {})
        if rec:
            notes.append("recorded per run: " + "; ".join(f"{k}: {v}" for k, v in rec.items()))
        paused = a.get("writer_paused_at_run_end")
        if paused:
            notes.append("timed runs that ended within the writer's pause (no wake): " +
                         "; ".join(f"{k}: {v:.0%}" for k, v in paused.items()))
        writes = a.get("writes")
        if writes:
            notes.append(f"session writes fsynced as they were made: {writes['fsynced_at_once']}, fsync deferred "
                         f"(synced later, at most one batch a second): {writes['fsync_deferred']}")
        parts.append("\n".join("   " + n for n in notes))
    ins = r.get("instructions")
    if ins:
        parts.append(_instructions_table(ins, names))
    abl = r.get("ablation")
    if abl:
        parts.append(_ablation_table(abl, names))
    calls = r.get("per_call")
    if calls:
        rows = [[name, _f(c["bare_us"]), _f(c["wrapt_us"]), _f(c["disabled_us"]), _f(c["enabled_us"]),
                 _f(c["disabled_over_floor_us"]), _f(c["enabled_added_us"]), _f(c["built_later_us"]),
                 _f(c["total_us"])] for name, c in calls.items()]
        parts.append(table("\n2. Per call (CPU µs, median of batches; calls made inside an agent run)",
                           ["wrapper", "bare", "wrapt floor", "disabled", "enabled", "disabled - floor",
                            "enabled - bare", "record built later", "total added"], rows))
    cold = r.get("per_call_cold")
    if cold:
        rows = [[name, _f(c["bare_us"]), _f(c["minimal_added_us"]), _f(c["disabled_added_us"]),
                 _f(c["enabled_added_us"]), _f(c["enabled_added_us"] - c["minimal_added_us"])]
                for name, c in cold.items()]
        first = next(iter(cold.values()))
        parts.append(table(f"\n2b. Per call, cache-cold (wall µs added, median of {first['rounds']} rounds; each call "
                           f"after a cache-evicting workload, as between two calls of a real run)",
                           ["wrapper", "bare call", "minimal hook", "sop disabled", "sop enabled",
                            "enabled - minimal"], rows))
    flush = r.get("flush")
    if flush:
        rows = []
        for label, f in flush.items():
            if label == "write_thread":
                continue
            st = f["stages_ms"]
            rows.append([label, f"{f['records']:,}", str(f["tasks"]), _f(f["flush_ms"], 1), _f(f["flush_cold_ms"], 1),
                         _f(f["file_bytes"] / 1e3, 1),
                         _f(f["bytes_per_record"], 0), _f(st["build_session"], 1), _f(st["to_json"], 1),
                         _f(f["load_ms"], 1)])
        fsync = "on" if all(f["fsync"] for k, f in flush.items() if k != "write_thread") else "off"
        parts.append(table(f"\n3. Flush with flush_data() (fsync {fsync}) and load with store.load()",
                           ["session", "records", "tasks", "flush ms", "first write ms", "file KB", "B/record",
                            "uncached: build ms",
                            "to_json ms", "load ms"], rows))
        wt = flush["write_thread"]
        parts.append(f"   written by thread {wt['thread']!r} (agent thread: {wt['agent_thread']!r})")
    mem = r.get("memory")
    if mem:
        p, c = mem["per_record"], mem["capped"]
        parts.append(table("\n4. Memory (tracemalloc)", ["measure", "value"], [
            ["bytes held per record", f"{_f(p['bytes_per_record'], 0)} B ({p['records']:,} records)"],
            ["bytes held per queued event", f"{_f(p.get('bytes_per_queued_event'), 0)} B "
                                            f"({p.get('queued_events', 0):,} events)"],
            [f"{c['calls']:,}-call task, cap {c['max_records_per_task']:,}: kept", str(c["kept"])],
            ["  dropped (counted)", f"{c['dropped']} ({'ok' if c['drops_counted'] else 'MISMATCH'})"],
            ["  held after / peak during", f"{_f(c['held_mb'], 1)} MB / {_f(c['peak_mb'], 1)} MB"],
        ]))
    imp = r.get("imports")
    if imp:
        parts.append(table(f"\n5. Import (median of {imp['runs']} interpreters)", ["measure", "value"], [
            ["-X importtime, sop_telemetry cumulative", f"{_f(imp['importtime_ms'])} ms"],
            ["python -c pass / -c 'import sop_telemetry'", f"{_f(imp['wall_pass_ms'], 1)} / "
                                                           f"{_f(imp['wall_import_ms'], 1)} ms"],
            ["heavy modules loaded by the import", ", ".join(imp["heavy_modules_loaded"]) or "none"],
        ]))
    ses = r.get("sessions")
    if ses:
        rows = [["get_all_session_ids()", _f(ses["get_all_session_ids_ms"], 1)]]
        rows.append(["analysis.load_sessions()", _f(ses["load_sessions_ms"], 1) if "load_sessions_ms" in ses
                     else ses.get("load_sessions_skipped", "skipped")])
        rows.append(["sop-telemetry list (subprocess)", _f(ses["cli_list_ms"], 1) if "cli_list_ms" in ses
                     else ses.get("cli_list_skipped", "skipped")])
        parts.append(table(f"\n6. {ses['sessions']:,} stored sessions ({_f(ses['bytes_per_file'] / 1e3, 1)} KB each)",
                           ["operation", "ms"], rows))
    pa = r.get("pydantic_ai")
    if pa:
        names_pa = {"none": "no telemetry", "sop": "sop_telemetry enabled (file written after the run)",
                    "sop_idle": "sop_telemetry enabled, writer idle at the run's end",
                    "sop_with_write": "sop_telemetry enabled + its file write on the run's thread",
                    "native": "pydantic-ai's own OpenTelemetry (in-memory exporter)"}
        rows = []
        for name, c in pa["cpu"]["setups"].items():
            w = pa["wall"]["setups"][name]
            if name == "none":
                rows.append([names_pa[name], _f(w["median_ms"]), _f(c["median_ms"]), "-", "-", "-", "-"])
            else:
                rows.append([names_pa[name], _f(w["median_ms"]), _f(c["median_ms"]), _f(c["added_ms"], 3),
                             f"{_f(c['added_ms_ci95'][0], 3)} to {_f(c['added_ms_ci95'][1], 3)}",
                             f"{_f(c['added_pct'], 1)}%", f"{_f(w['added_pct'], 1)}%"])
        parts.append(table(f"\n8. pydantic-ai agent run: 5 model requests, 20 parallel tool calls; {pa['runs']} "
                           f"interleaved samples per setup (each the fastest of {pa['repeats']} runs)",
                           ["setup", "wall ms", "CPU ms", "+CPU ms (median)", "95% interval", "+CPU %", "+wall %"],
                           rows))
        parts.append(f"   recorded per run: {pa['recorded_per_run']}; native spans per run: "
                     f"{pa['native_spans_per_run']}")
        ins = r.get("pydantic_ai_instructions")
        if ins and ins.get("counted"):
            for name, c in ins["setups"].items():
                more = "" if name == "none" else f" (+{c['added']:,.0f}, {_f(c['added_pct'])}%)"
                parts.append(f"   8b. instructions per run, {names_pa[name]}: {c['per_run']:,.0f}{more}")
    verdicts = targets(r)
    quick = meta.get("mode") == "quick"
    rows = [[what, measured, target,
             "skipped" if ok is None else ("not judged (--quick)" if quick else ("PASS" if ok else "FAIL"))]
            for what, measured, target, ok in verdicts]
    parts.append(table("\nTargets (issue 6)", ["target", "measured", "target", "result"], rows))
    return "\n".join(parts)


def _instructions_table(ins: Dict[str, Any], names: Dict[str, str]) -> str:
    title = "\n1c. Instructions per agent run on the agent's thread (callgrind; nearly the same count in every process)"
    if ins.get("skipped"):
        return f"{title}\n   skipped: {ins['skipped']}"
    if not ins.get("counted"):
        return f"{title}\n   not counted (--quick: each setup ran once, natively)"
    parts = []
    for kind, label in (("tool_calling", "ToolCallingAgent"), ("code", "CodeAgent")):
        k = ins.get(kind)
        if not k:
            continue
        rows = [[names.get(name, name), _f(c["per_run"], 0), "-" if name == "none" else _f(c["added"], 0),
                 "-" if name == "none" else f"{_f(c['added_pct'])}%"] for name, c in k["setups"].items()]
        parts.append(table(f"{title if not parts else ''}\n   {label}: {ins['runs']} counted runs per setup, after "
                           f"{ins['warmup']} warm-up runs", ["setup", "instructions per run", "added", "added %"],
                           rows))
        ratio = k.get("openinference_over_sop")
        if ratio is not None:
            parts.append(f"   OpenInference adds {_f(ratio, 1)}x the instructions sop_telemetry adds")
    if ins.get("openinference_skipped"):
        parts.append("   " + ins["openinference_skipped"])
    return "\n".join(parts)


_ABLATION_NAMES = {
    "without_model_hook": "never written, without the model hook",
    "without_tool_hook": "never written, without the tool hook",
    "run_hook_only": "never written, the run's hook only",
    "model_hook": "the model hook (generate)",
    "tool_hook": "the tool hook (Tool.__call__)",
    "run_hook": "the run's hook (its start and end, steps included)",
}


def _ablation_table(abl: Dict[str, Any], names: Dict[str, str]) -> str:
    def row(name: str, c: Dict[str, Any]) -> List[str]:
        low, high = c["added_ms_ci95"]
        return [_ABLATION_NAMES.get(name, names.get(name, name)), _f(c["added_ms"], 3),
                f"{_f(low, 3)} to {_f(high, 3)}", f"{_f(c['added_pct'], 1)}%"]

    title = (f"\n1d. Where the time goes: ToolCallingAgent, {abl['runs']} interleaved samples per setup (each the "
             f"fastest of {abl['repeats']} runs), against {_f(abl['none_ms'])} ms uninstrumented")
    setups = table(title, ["setup", "+CPU ms (median)", "95% interval", "+CPU %"],
                   [row(n, c) for n, c in abl["setups"].items()])
    parts = table("   each part: what taking it out saves (paired)",
                  ["part", "CPU ms (median)", "95% interval", "% of the run"],
                  [row(n, c) for n, c in abl["parts"].items()])
    return setups + "\n" + parts
