"""benchmarks/bench_time_to_loss.py's report: time to a target loss (interpolated between scored points), the sweep's
winners, the table and the plot of held-out loss against the clock."""

from pathlib import Path

PEERS = ("stock", "trl")


def time_to_reach(curve: list[dict], target: float, key: str = "clock") -> float | None:
    """The `key` (clock or tokens) at which the held-out loss first reaches `target`, interpolated linearly between
    the scored points of `curve` (dicts with loss, clock, tokens, in order); None if it never does."""
    for before, point in zip(curve, curve[1:]):
        if point["loss"] <= target:
            if before["loss"] <= target:
                return before[key]
            share = (before["loss"] - target) / (before["loss"] - point["loss"])
            return before[key] + share * (point[key] - before[key])
    return curve[0][key] if curve and curve[0]["loss"] <= target else None


def winners(runs: list[dict]) -> dict:
    """{variant: {learning_rate, rows_per_step, loss}}: each variant's run with the lowest final held-out loss."""
    best = {}
    for run in runs:
        if run["variant"] not in best or run["final_loss"] < best[run["variant"]]["loss"]:
            best[run["variant"]] = {
                "learning_rate": run["learning_rate"],
                "rows_per_step": run["rows_per_step"],
                "loss": run["final_loss"],
            }
    return best


def loss_at(curve: list[dict], key: str, value: float) -> float | None:
    """The held-out loss at `key` == value, interpolated between scored points; None outside the curve."""
    for before, point in zip(curve, curve[1:]):
        if before[key] <= value <= point[key] and point[key] > before[key]:
            share = (value - before[key]) / (point[key] - before[key])
            return before["loss"] + share * (point["loss"] - before["loss"])
    return None


NAMES = {
    "moai_adamw": "MOAI + AdamW",
    "moai_muon": "MOAI + Muon",
    "stock": "Trainer + Qwen3ForCausalLM (padded)",
    "trl": "TRL SFTTrainer (packing)",
    "moai_adamw_random": "MOAI + AdamW, rows at random",
    "moai_muon_random": "MOAI + Muon, rows at random",
}


def table(results: dict) -> str:
    """The time-to-loss table (markdown) and the targets, from {variant: run}."""
    peers = [v for v in PEERS if v in results] or list(results)  # --variants without the peers: the best run
    peer = min(peers, key=lambda v: results[v]["final_loss"])
    target = results[peer]["final_loss"]
    peer_clock = time_to_reach(results[peer]["curve"], target)
    lines = [
        f"target: the best {'peer' if peer in PEERS else 'run'}'s ({NAMES[peer]}) final held-out loss {target:.3f}",
        "| variant | lr | rows/step | steps | tokens | tokens/s | final loss | clock to target (s) | "
        "tokens to target | time vs peer |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, run in results.items():
        clock, tokens = time_to_reach(run["curve"], target), time_to_reach(run["curve"], target, "tokens")
        reached = clock is not None
        lines.append(
            f"| {NAMES[variant]} | {run['learning_rate']:g} | {run['rows_per_step']} | {run['steps']:,} | "
            f"{run['tokens']:,} | {run['tokens_per_s']:,.0f} | {run['final_loss']:.3f} | "
            + (f"{clock:.1f} | {tokens:,.0f} | {clock / peer_clock:.2f}x |" if reached else "not reached | | |")
        )
    muon, adamw = results.get("moai_muon"), results.get("moai_adamw")
    if muon and adamw:
        m_clock, m_tokens = time_to_reach(muon["curve"], target), time_to_reach(muon["curve"], target, "tokens")
        a_tokens = time_to_reach(adamw["curve"], target, "tokens")
        if m_clock is not None:
            lines.append(f"MOAI + Muon time to target / peer's: {m_clock / peer_clock:.2f} (target <= 0.33)")
        if m_tokens and a_tokens:
            lines.append(f"MOAI + AdamW tokens to target / MOAI + Muon's: {a_tokens / m_tokens:.2f} (target >= 1.2)")
    for name in ("moai_adamw", "moai_muon"):
        balanced, random = results.get(name), results.get(f"{name}_random")
        if balanced and random:
            step = min(balanced["steps"], random["steps"])
            per_step = [loss_at(r["curve"], "step", s) for r in (balanced, random) for s in (step // 2, step)]
            per_step = [float("nan") if loss is None else loss for loss in per_step]
            lines.append(
                f"balance order vs rows at random ({NAMES[name]}): held-out loss at step {step // 2}: "
                f"{per_step[0]:.3f} vs {per_step[2]:.3f}; at step {step}: {per_step[1]:.3f} vs {per_step[3]:.3f}"
            )
    return "\n".join(lines)


def plot(results: dict, path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for variant, run in results.items():
        curve = run["curve"]
        label = f"{NAMES[variant]} (lr {run['learning_rate']:g}, {run['rows_per_step']} rows/step)"
        axis.plot([p["clock"] for p in curve], [p["loss"] for p in curve], marker="o", markersize=3, label=label)
    axis.set_xlabel("training clock (s, single-thread CPU time, scoring excluded)")
    axis.set_ylabel("held-out loss (fp32)")
    axis.set_ylim(top=min(8.0, max(p["loss"] for r in results.values() for p in r["curve"][1:]) + 0.3))
    axis.set_title(f"Held-out loss against time, 11.8M-parameter Qwen3, {budget:g} s per run")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
