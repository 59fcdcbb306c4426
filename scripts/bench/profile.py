"""Where a training step's time goes: torch.profiler over a few steps of one contender (`--profile`)."""

from __future__ import annotations

from typing import Any

from torch.profiler import ProfilerActivity, profile

from .contenders import LoopContender

# Operator names by what they do, for the summary (anything else is "other").
GROUPS: dict[str, tuple[str, ...]] = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention kernel": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                         "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "dropout sampling": ("aten::bernoulli_", "aten::uniform_", "aten::random_"),
    "optimizer arithmetic": ("aten::lerp_", "aten::addcmul_", "aten::addcdiv_", "aten::sqrt", "aten::_fused_adamw_",
                             "aten::_foreach_lerp_", "aten::_foreach_addcmul_", "aten::_foreach_addcdiv_",
                             "aten::_foreach_sqrt"),
}


def profile_steps(contender: LoopContender, steps: int) -> tuple[str, dict[str, Any]]:
    """Profile `steps` steps on the contender's sample: (printable operator table, grouped shares)."""
    contender.block(1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        contender.block(steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups = {name: 0.0 for name in GROUPS} | {"other": 0.0}
    for e in events:
        group = next((g for g, ops in GROUPS.items() if e.key in ops), "other")
        groups[group] += e.self_cpu_time_total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    optimizer = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step"))
    return events.table(sort_by="self_cpu_time_total", row_limit=25), {
        "steps": steps,
        "self_cpu_ms_per_step": total / 1000 / (steps + 1),
        "optimizer_step_share": optimizer / total,
        "share": {g: v / total for g, v in groups.items()},
        "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_share": e.self_cpu_time_total / total} for e in top],
    }
