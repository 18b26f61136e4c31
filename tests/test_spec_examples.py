"""The spec's usage examples, run as written with `ai_agents.telemetry` renamed to `sop_telemetry`.

Each test names the spec section it comes from. SOP_TELEMETRY_DIR points at the test's folder throughout, so that
examples naming `/custom/path` or the default cache folder write nothing outside it (the variable wins over code).
"""

from __future__ import annotations

import json
import logging
import os

import pytest

from sop_telemetry import TaskStatus, TelemetryCollector, TelemetryManager, TelemetrySession


@pytest.fixture(autouse=True)
def contained(manager, storage_dir, monkeypatch):
    monkeypatch.setenv("SOP_TELEMETRY_DIR", str(storage_dir))
    return manager


def manual_collection() -> None:
    """手动数据收集, verbatim."""
    manager = TelemetryManager.get_instance()
    collector = manager.get_collector()

    # 开始任务
    collector.start_task("custom_task", "自定义任务")

    # 记录LLM调用
    collector.record_llm_call(
        model="gpt-4",
        prompt_tokens=150,
        completion_tokens=75,
        duration=3.2
    )

    # 记录工具使用
    collector.record_tool_usage("file_reader", 0.8)

    # 结束任务
    collector.end_task("custom_task", TaskStatus.COMPLETED)


# -- 核心组件 -------------------------------------------------------------------------------------------------------
def test_telemetry_manager_usage(storage_dir):
    """1. 遥测管理器 (TelemetryManager) — 使用方式."""
    # 获取单例实例
    manager = TelemetryManager.get_instance()

    # 初始化（自动完成）
    manager.initialize()

    # 获取收集器（单会话）
    collector = manager.get_collector()

    # 手动刷新数据
    manager.flush_data()

    # 获取当前会话数据
    session_data = manager.get_session_data()

    # 获取存储统计
    stats = manager.get_storage_stats()

    assert collector is manager.get_collector()
    assert session_data.session_id == collector.session_id
    assert stats["storage_path"] == str(storage_dir)


def test_telemetry_collector_core_methods():
    """2. 遥测收集器 (TelemetryCollector) — 核心方法."""
    collector = TelemetryCollector()

    # 任务管理
    collector.start_task("task_123", "分析代码仓库")
    collector.end_task("task_123", TaskStatus.COMPLETED)

    # LLM调用记录
    collector.record_llm_call(
        model="gpt-4",
        prompt_tokens=100,
        completion_tokens=50,
        duration=2.5
    )

    # 智能体执行记录
    collector.record_agent_execution(
        agent_type="supervisor",
        agent_name="RepoAnalysisAgent",
        duration=30.2
    )

    # 工具使用记录
    collector.record_tool_usage(
        tool_name="file_reader",
        duration=0.5
    )

    session = collector.build_session()
    assert session.total_tokens.total_tokens == 150
    assert [t.task_id for t in session.tasks] == ["task_123", "untracked"]


# -- 使用示例 -------------------------------------------------------------------------------------------------------
def test_manual_collection(storage_dir):
    """手动数据收集."""
    manual_collection()
    manager = TelemetryManager.get_instance()
    session = manager.get_session_data()
    [task] = session.tasks
    assert (task.task_id, task.description, task.status) == ("custom_task", "自定义任务", TaskStatus.COMPLETED)
    assert task.llm_calls[0].total_tokens == 225 and task.llm_calls[0].duration == 3.2
    assert task.tools[0].tool_name == "file_reader" and task.tools[0].duration == 0.8
    manager.flush_data()
    stored = TelemetrySession.from_json((storage_dir / f"{session.session_id}.json").read_bytes())
    assert stored.tasks == session.tasks


def test_basic_usage_printout(capsys):
    """基本使用: the part after the agent run (an agent run itself is covered by the integration tests)."""
    manual_collection()

    # 获取遥测数据
    manager = TelemetryManager.get_instance()
    session_data = manager.get_session_data()

    print(f"总令牌使用: {session_data.total_tokens.total_tokens}")
    print(f"执行时间: {session_data.total_duration}秒")
    print(f"任务数量: {len(session_data.tasks)}")

    out = capsys.readouterr().out
    assert "总令牌使用: 225\n" in out and "任务数量: 1\n" in out


def test_basic_usage_with_a_real_agent(capsys):
    """基本使用, with a smolagents agent on a scripted model standing in for RepoAnalysisSupervisorAgent."""
    from fakes import ScriptedModel, call
    from smolagents import ToolCallingAgent

    agent = ToolCallingAgent(tools=[], model=ScriptedModel([call("final_answer", answer="架构清晰")], usage=(120, 30)),
                             verbosity_level=0)
    result = agent.run("分析这个代码仓库的架构")

    manager = TelemetryManager.get_instance()
    session_data = manager.get_session_data()

    print(f"总令牌使用: {session_data.total_tokens.total_tokens}")
    print(f"执行时间: {session_data.total_duration}秒")
    print(f"任务数量: {len(session_data.tasks)}")

    assert result == "架构清晰"
    out = capsys.readouterr().out
    assert "总令牌使用: 150\n" in out and "任务数量: 1\n" in out


def test_statistics(capsys, storage_dir):
    """获取统计信息."""
    for _ in range(7):  # seven older sessions on disk, so that [-5:] means something
        manual_collection()
        TelemetryManager.get_instance().flush_data()
        TelemetryManager._reset_instance().initialize({"storage_dir": str(storage_dir), "fsync": False,
                                                       "auto_cleanup": False})
    manual_collection()
    TelemetryManager.get_instance().flush_data()  # written anyway when the task ends; now, not maybe-now

    manager = TelemetryManager.get_instance()

    # 获取存储统计
    stats = manager.get_storage_stats()
    print(f"存储路径: {stats['storage_path']}")
    print(f"活跃收集器: {stats['active_collectors']}")
    print(f"总文件数: {stats['total_files']}")

    # 获取所有会话ID
    session_ids = manager.get_all_session_ids()
    print(f"历史会话: {len(session_ids)}")

    # 获取特定会话数据
    for session_id in session_ids[-5:]:  # 最近5个会话
        session = manager.get_session_data(session_id)
        if session:
            print(f"会话 {session_id}: {len(session.tasks)} 个任务")

    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [f"存储路径: {storage_dir}", "活跃收集器: 1", "总文件数: 8", "历史会话: 8"]
    assert out[4:] == [f"会话 {sid}: 1 个任务" for sid in session_ids[-5:]]
    assert session_ids[-1] == manager.get_collector().session_id
    assert session_ids == sorted(session_ids)


# -- 配置选项 / 禁用遥测 -------------------------------------------------------------------------------------------
def test_configuration_options(storage_dir):
    """配置选项 (storage_dir "/custom/path" is overridden by SOP_TELEMETRY_DIR, see the module docstring)."""
    # 自定义配置
    config = {
        "enabled": True,                    # 启用/禁用遥测
        "storage_dir": "/custom/path",      # 自定义存储目录
        "max_file_age_days": 14,           # 文件最大保存天数
        "auto_cleanup": True,               # 自动清理旧文件
    }

    manager = TelemetryManager.get_instance()
    manager.initialize(config)

    assert manager.get_storage_stats()["storage_path"] == str(storage_dir)
    assert manager.config.max_file_age_days == 14
    assert not os.path.exists("/custom/path")


def test_disabling_telemetry(storage_dir):
    """禁用遥测."""
    manager = TelemetryManager.get_instance()

    # 禁用遥测
    manager.disable_telemetry()
    assert manager.is_enabled() is False
    manual_collection()
    assert manager.get_session_data().tasks == []

    # 重新启用
    manager.enable_telemetry()
    assert manager.is_enabled() is True
    manual_collection()
    assert len(manager.get_session_data().tasks) == 1


# -- 数据分析 -------------------------------------------------------------------------------------------------------
def analyze_token_usage(session: TelemetrySession):
    """分析会话的令牌使用情况"""
    total_tokens = session.total_tokens

    print(f"总令牌使用: {total_tokens.total_tokens}")
    print(f"提示令牌: {total_tokens.prompt_tokens}")
    print(f"完成令牌: {total_tokens.completion_tokens}")

    # 按模型分解
    for model, usage in total_tokens.model_breakdown.items():
        print(f"{model}: {usage.total_tokens} 令牌")

    # 成本估算
    if total_tokens.cost_estimate:
        print(f"估算成本: ${total_tokens.cost_estimate:.4f}")


def analyze_performance(session: TelemetrySession):
    """分析会话的性能情况"""
    print(f"总执行时间: {session.total_duration:.2f}秒")

    # 按任务分析
    for task in session.tasks:
        print(f"任务 {task.task_id}: {task.duration:.2f}秒")

        # 按智能体分析
        for agent in task.agents:
            print(f"  {agent.agent_name}: {agent.duration:.2f}秒")

        # 按工具分析
        for tool in task.tools:
            print(f"  工具 {tool.tool_name}: {tool.duration:.2f}秒")


def test_data_analysis(capsys):
    """数据分析: 令牌使用分析 and 性能分析, on the current session and on the same session loaded from its file."""
    collector = TelemetryManager.get_instance().get_collector()
    collector.start_task("custom_task", "自定义任务")
    collector.record_agent_execution("supervisor", "RepoAnalysisAgent", 30.2)
    collector.record_llm_call(model="gpt-4", prompt_tokens=150, completion_tokens=75, duration=3.2)
    collector.record_llm_call(model="my-local-model", prompt_tokens=10, completion_tokens=5, duration=0.4)
    collector.record_tool_usage("file_reader", 0.8)
    collector.end_task("custom_task", TaskStatus.COMPLETED)

    manager = TelemetryManager.get_instance()
    for session in (manager.get_session_data(), manager.get_session_data(manager.flush_data().stem)):
        analyze_token_usage(session)
        analyze_performance(session)
        out = capsys.readouterr().out
        assert "总令牌使用: 240\n提示令牌: 160\n完成令牌: 80\n" in out
        assert "gpt-4: 225 令牌\nmy-local-model: 15 令牌\n" in out
        assert "估算成本: $" in out  # gpt-4 has a price in the price database
        assert "任务 custom_task: " in out
        assert "  RepoAnalysisAgent: 30.20秒\n" in out
        assert "  工具 file_reader: 0.80秒\n" in out


# -- 导出数据 -------------------------------------------------------------------------------------------------------
def export_session_data(session_id: str, output_file: str):
    """导出会话数据到文件"""
    manager = TelemetryManager.get_instance()
    session = manager.get_session_data(session_id)

    if session:
        # 导出为JSON
        with open(output_file, 'w', encoding='utf-8') as f:
            f.write(session.to_json())

        print(f"会话数据已导出到: {output_file}")
    else:
        print(f"未找到会话: {session_id}")


def test_export_session_data(tmp_path, capsys):
    """导出数据: a stored session, the current one, and an unknown id."""
    manual_collection()
    manager = TelemetryManager.get_instance()
    session_id = manager.flush_data().stem

    output_file = str(tmp_path / "export.json")
    export_session_data(session_id, output_file)
    assert capsys.readouterr().out == f"会话数据已导出到: {output_file}\n"
    exported = TelemetrySession.from_json(open(output_file, encoding="utf-8").read())
    assert exported == manager.get_session_data(session_id)
    assert json.loads(open(output_file, encoding="utf-8").read())["tasks"][0]["description"] == "自定义任务"

    export_session_data("20200101T000000_000000_00000000", str(tmp_path / "none.json"))
    assert capsys.readouterr().out == "未找到会话: 20200101T000000_000000_00000000\n"
    export_session_data("../../etc/passwd", str(tmp_path / "none.json"))
    assert capsys.readouterr().out == "未找到会话: ../../etc/passwd\n"
    assert not (tmp_path / "none.json").exists()


# -- 错误处理 -------------------------------------------------------------------------------------------------------
def test_error_handling():
    """自动错误恢复 and 错误监控."""
    from sop_telemetry.error_handler import safe_telemetry_operation

    @safe_telemetry_operation("custom_operation")
    def my_telemetry_function():
        """使用装饰器确保错误安全"""
        # 遥测操作代码
        raise RuntimeError("遥测操作失败")

    my_telemetry_function()

    from sop_telemetry import get_error_handler

    error_handler = get_error_handler()

    # 获取错误摘要
    error_summary = error_handler.get_error_summary()
    print(f"遥测错误数量: {len(error_summary)}")
    assert error_summary["custom_operation"]["count"] == 1

    # 重置错误状态
    error_handler.reset_error_state()
    assert error_handler.get_error_summary() == {}


# -- 故障排除 / 调试模式 -------------------------------------------------------------------------------------------
def test_troubleshooting(capsys, storage_dir):
    """故障排除: 遥测数据没有被收集 / 存储空间不足 / 性能影响过大."""
    manager = TelemetryManager.get_instance()
    print(f"遥测状态: {manager.is_enabled()}")

    old = storage_dir / "20200101T000000_000000_0000beef.json"
    storage_dir.mkdir(parents=True, exist_ok=True)
    old.write_text("{}")
    os.utime(old, (0, 0))

    manager = TelemetryManager.get_instance()
    cleaned = manager.cleanup_old_data(max_age_days=7)
    print(f"清理了 {cleaned} 个文件")

    config = {
        "flush_interval": 600,  # 增加刷新间隔
        "max_memory_sessions": 20,  # 减少内存会话数
    }
    manager.initialize(config)

    assert capsys.readouterr().out == "遥测状态: True\n清理了 1 个文件\n"
    assert not old.exists()
    assert manager.config.flush_interval == 600 and manager.config.max_memory_sessions == 20
    assert manager.get_storage_stats()["storage_path"] == str(storage_dir)


def test_debug_mode(caplog):
    """调试模式: the logger is `sop_telemetry`, and debug logs say what was written."""
    # 启用遥测调试日志
    logging.getLogger('sop_telemetry').setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="sop_telemetry"):
            manual_collection()
            path = TelemetryManager.get_instance().flush_data()
        assert any(str(path) in r.getMessage() for r in caplog.records if r.name == "sop_telemetry")
    finally:
        logging.getLogger('sop_telemetry').setLevel(logging.NOTSET)
