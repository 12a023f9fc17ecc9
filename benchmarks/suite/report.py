"""The suite's table (each figure with its ratio to the best peer), results.json and results.png."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from .engines import OURS, label, split_key

# column -> (title, format, higher is better)
COLUMNS = {
    "size_mib": ("size MiB", "{:.0f}", False),
    "prefill_tps": ("prefill tok/s", "{:.0f}", True),
    "ttft_ms": ("TTFT ms", "{:.0f}", False),
    "decode_tps": ("decode tok/s", "{:.1f}", True),
    "peak_rss_mib": ("peak RSS MiB", "{:.0f}", False),
    "perplexity": ("perplexity", "{:.2f}", False),
    "floor_share": ("% of bw floor", "{:.0%}", True),
}
# perplexity of a model whose weights mean nothing (random): null in results.json, "n/a" in the table
NOT_APPLICABLE = "n/a"


def summarize(key: str, speed: list, ppl: dict, size_bytes: int, weight_bytes: int, bandwidth: float) -> dict:
    """One row from the child results of an engine (medians over every timed run of every process);
    `ppl` is NOT_APPLICABLE for a model whose perplexity means nothing."""
    runs = [r for proc in speed for r in proc["runs"]]
    row = {"key": key, "label": label(key), "size_mib": size_bytes / 2**20,
           "weight_mib_per_token": weight_bytes / 2**20, "processes": len(speed), "runs": len(runs)}
    if runs:
        decode = statistics.median(r["decode_tps"] for r in runs)
        floor = bandwidth / weight_bytes
        row.update(prefill_tps=statistics.median(r["prefill_tps"] for r in runs),
                   ttft_ms=1000 * statistics.median(r["ttft_s"] for r in runs), decode_tps=decode,
                   decode_tps_min=min(r["decode_tps"] for r in runs), decode_tps_max=max(r["decode_tps"] for r in runs),
                   peak_rss_mib=statistics.median(p["peak_rss_bytes"] for p in speed) / 2**20,
                   load_s=statistics.median(p["load_s"] for p in speed), floor_tps=floor,
                   floor_share=decode / floor, first_tokens=speed[0]["tokens"][:16])
    if ppl == NOT_APPLICABLE:
        row["perplexity"] = None
    elif ppl:
        row["perplexity"] = ppl["perplexity"]
    return row


def best_peer(rows: list, column: str):
    _, _, higher = COLUMNS[column]
    values = [r[column] for r in rows if split_key(r["key"])[0] != OURS and r.get(column) is not None]
    if not values:
        return None
    return max(values) if higher else min(values)


def table(rows: list) -> str:
    """A Markdown table: each cell 'value (ratio to the best peer)'."""
    best = {c: best_peer(rows, c) for c in COLUMNS}
    head = "| engine / variant | " + " | ".join(t for t, _, _ in COLUMNS.values()) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = []
        for column, (_, fmt, _) in COLUMNS.items():
            if column not in r:
                cells.append("-")
                continue
            if r[column] is None:
                cells.append(NOT_APPLICABLE)
                continue
            text = fmt.format(r[column])
            if best[column]:
                text += f" ({r[column] / best[column]:.2f}x)"
            cells.append(text)
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2))


def plot(path: Path, rows: list) -> bool:
    """Bar charts of decode tok/s, TTFT and perplexity; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [("decode_tps", "decode tok/s (higher is better)"), ("ttft_ms", "TTFT ms (lower is better)"),
              ("perplexity", "perplexity (lower is better)"), ("peak_rss_mib", "peak RSS MiB (lower is better)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.45 * len(rows) + 1.5))
    names = [r["label"] for r in rows]
    colors = ["tab:green" if split_key(r["key"])[0] == OURS else "tab:gray" for r in rows]
    for ax, (column, title) in zip(axes, panels):
        ax.barh(names, [r.get(column) or 0 for r in rows], color=colors)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
