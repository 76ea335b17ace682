"""Render docs/grafana/clusterchat.json as a PNG from real scrapes of nodes under load.

There is no Grafana on the machine this project is built on, so this script does what Grafana
would: it runs a cluster (embedded Redis, nodes ``a`` and ``b``; ``c`` joins a third of the
way in, so rooms are handed to it, and is SIGKILLed at two thirds, so its rooms are taken over),
drives chat traffic at it (clients on ``a`` and ``b`` sending messages, now and then a malformed
frame, one client over its rate limit, a few reconnects), scrapes every node's ``/metrics`` once
a second, and then evaluates each panel's PromQL over those scrapes and draws the panels where
the dashboard's ``gridPos`` puts them. It understands the PromQL the dashboard uses and nothing
more: ``rate(m[$__rate_interval])``, ``sum``/``max`` with ``by (...)``, and
``histogram_quantile``, with Prometheus' bucket interpolation; ``instance`` is the node name.

    python benchmarks/dashboard_png.py   # 90 s; writes docs/img/grafana-clusterchat.png
    python benchmarks/dashboard_png.py --duration 30 --out /tmp/d.png
    python benchmarks/dashboard_png.py --redraw       # again from the saved scrapes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import math
import random
import re
import signal
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cluster.embedded import EmbeddedRedis  # noqa: E402
from tests.support.client import ChatClient  # noqa: E402
from tests.support.nodes import Cluster, Node, manage  # noqa: E402

DASHBOARD = ROOT / "docs" / "grafana" / "clusterchat.json"
ROOMS = [f"room-{i}" for i in range(6)]

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
# one scrape round: time -> {(sample name, labels incl. instance): value}
Round = tuple[float, dict[tuple[str, Labels], float]]


# -- the load and the scrapes ------------------------------------------------------------------


def scrape_text(node: Node) -> str | None:
    try:
        with urllib.request.urlopen(f"{node.http}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def parse(text: str, instance: str) -> dict[tuple[str, Labels], float]:
    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset({**sample.labels, "instance": instance}.items())
            out[(sample.name, labels)] = float(sample.value)
    return out


async def chatter(
    node: Node, room: str, name: str, stop: asyncio.Event, *, interval: float, bad: bool
) -> None:
    client = ChatClient(node.ws, room, name)
    rng = random.Random(name)
    reconnect_at = time.monotonic() + rng.uniform(8, 20)
    with contextlib.suppress(Exception):
        await client.connect()
        while not stop.is_set():
            if bad and rng.random() < 0.05:
                await client.send_frame({"type": "nonsense"})
            else:
                await client.send(f"{name} says {rng.random():.4f}")
            if time.monotonic() > reconnect_at:  # churn: a close 1000, then a resume
                await client.close()
                client = ChatClient(node.ws, room, name)
                await client.connect()
                reconnect_at = time.monotonic() + rng.uniform(8, 20)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.5) * interval)
    with contextlib.suppress(Exception):
        await client.close()


async def run_load(cluster: Cluster, duration: float) -> list[Round]:
    a, b = cluster.nodes[0], cluster.nodes[1]
    stop = asyncio.Event()
    tasks = []
    for i in range(36):
        node = a if i % 2 == 0 else b
        room = ROOMS[i % len(ROOMS)]
        tasks.append(chatter(node, room, f"user{i}", stop, interval=0.5, bad=True))
    # One client well over CHAT_RATE_LIMIT (20 per 10 s): its extra sends are rate_limited.
    tasks.append(chatter(a, ROOMS[0], "flooder", stop, interval=0.2, bad=False))
    load = [asyncio.ensure_future(t) for t in tasks]
    rounds: list[Round] = []
    started = time.monotonic()
    c: Node | None = None
    c_killed = False
    loop = asyncio.get_running_loop()
    while (elapsed := time.monotonic() - started) < duration:
        if c is None and elapsed > duration / 3:
            c = await loop.run_in_executor(None, lambda: cluster.add("c"))
        if c is not None and not c_killed and elapsed > 2 * duration / 3:
            c.signal(signal.SIGKILL)
            c_killed = True
        samples: dict[tuple[str, Labels], float] = {}
        for node in cluster.nodes:
            if node is c and c_killed:
                continue
            text = await loop.run_in_executor(None, scrape_text, node)
            if text is not None:
                samples.update(parse(text, node.name))
        rounds.append((time.monotonic() - started, samples))
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started - elapsed)))
    stop.set()
    await asyncio.gather(*load, return_exceptions=True)
    return rounds


# -- the PromQL the dashboard uses ---------------------------------------------------------------


def _split_args(text: str) -> list[str]:
    depth, parts, current = 0, [], ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        current += ch
    parts.append(current.strip())
    return parts


def _strip_parens(text: str) -> str:
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return text
        text = text[1:-1].strip()
    return text


def evaluate(expr: str, rounds: list[Round], index: int, window_s: float) -> Vector:
    expr = _strip_parens(expr)
    m = re.fullmatch(r"histogram_quantile\((.*)\)", expr, re.S)
    if m:
        q_text, inner = _split_args(m[1])
        return _quantile(float(q_text), evaluate(inner, rounds, index, window_s))
    m = re.fullmatch(r"(sum|max)\s*(?:by\s*\(([^)]*)\))?\s*\((.*)\)", expr, re.S)
    if m:
        keep = [k.strip() for k in (m[2] or "").split(",") if k.strip()]
        out: dict[Labels, float] = defaultdict(float) if m[1] == "sum" else {}
        for labels, v in evaluate(m[3], rounds, index, window_s).items():
            key = frozenset((k, val) for k, val in labels if k in keep)
            if m[1] == "sum":
                out[key] += v
            else:
                out[key] = max(out.get(key, -math.inf), v)
        return dict(out)
    m = re.fullmatch(r"rate\((\w+)\[[^\]]+\]\)", expr)
    if m:
        return _rate(m[1], rounds, index, window_s)
    m = re.fullmatch(r"\w+", expr)
    if m:
        return _select(expr, rounds[index][1])
    raise ValueError(f"PromQL this renderer does not know: {expr}")


def _select(name: str, samples: dict[tuple[str, Labels], float]) -> Vector:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def _rate(name: str, rounds: list[Round], index: int, window_s: float) -> Vector:
    now_t, now = rounds[index]
    earlier = index
    while earlier > 0 and now_t - rounds[earlier][0] < window_s:
        earlier -= 1
    if earlier == index:
        return {}
    then_t, then = rounds[earlier]
    old = _select(name, then)
    out: Vector = {}
    for labels, v in _select(name, now).items():
        if labels in old:
            increase = v - old[labels] if v >= old[labels] else v  # a counter reset
            out[labels] = increase / (now_t - then_t)
    return out


def _quantile(q: float, buckets: Vector) -> Vector:
    groups: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
    for labels, v in buckets.items():
        le = dict(labels)["le"]
        groups[frozenset((k, x) for k, x in labels if k != "le")].append((float(le), v))
    out: Vector = {}
    for key, points in groups.items():
        points.sort()
        total = points[-1][1]
        if total <= 0:
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in points:
            if count >= rank:
                if math.isinf(bound):
                    out[key] = lower_bound
                else:
                    share = (
                        (rank - lower_count) / (count - lower_count) if count > lower_count else 0
                    )
                    out[key] = lower_bound + (bound - lower_bound) * share
                break
            lower_bound, lower_count = bound, count
    return out


def legend(template: str, labels: Labels) -> str:
    values = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m[1], ""), template)


# -- drawing -------------------------------------------------------------------------------------

BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLOURS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"]


def fmt_unit(unit: str, value: float) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 2**20:.0f} MiB"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    return f"{value:.3g}"


def render(rounds: list[Round], out: Path, window_s: float, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.42
    fig = plt.figure(figsize=(18, rows * unit_h + 0.8), facecolor=BACKGROUND)
    fig.suptitle(
        f"{dashboard['title']} (docs/grafana/clusterchat.json, drawn from real scrapes: {note})",
        color=TEXT, fontsize=12, x=0.01, ha="left", y=1 - 0.25 / (rows * unit_h + 0.8),
    )  # fmt: skip
    times = [t for t, _ in rounds]
    top = 1 - 0.8 / (rows * unit_h + 0.8)
    for panel in panels:
        g = panel["gridPos"]
        left, width = g["x"] / 24 + 0.035, g["w"] / 24 - 0.05
        height = g["h"] / rows * top - 0.045
        bottom = top - (g["y"] + g["h"]) / rows * top + 0.03
        ax = fig.add_axes((left, bottom, width, height), facecolor=PANEL)
        ax.set_title(panel["title"], color=TEXT, fontsize=10, loc="left")
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=TEXT, labelsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "none")
        if panel["type"] == "stat":
            target = panel["targets"][0]
            vec = evaluate(target["expr"], rounds, len(rounds) - 1, window_s)
            value = sum(vec.values()) if vec else float("nan")
            ax.text(0.5, 0.45, f"{value:g}", color=COLOURS[0], fontsize=26, ha="center",
                    va="center", transform=ax.transAxes)  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        series: dict[str, list[float]] = {}
        for target in panel["targets"]:
            per_time = [evaluate(target["expr"], rounds, i, window_s) for i in range(len(rounds))]
            keys = sorted({k for vec in per_time for k in vec}, key=sorted)
            for key in keys:
                name = legend(target.get("legendFormat", ""), key) or target["expr"][:30]
                series[name] = [vec.get(key, float("nan")) for vec in per_time]
        for i, (name, values) in enumerate(series.items()):
            ax.plot(times, values, color=COLOURS[i % len(COLOURS)], linewidth=1.3, label=name)
        ax.grid(color=GRID, linewidth=0.5)
        # Every panel on the run's whole time range, from zero, with room above the highest
        # point (a flat line at the top would hide under the frame).
        ax.set_xlim(0, times[-1] if times else 1)
        finite = [v for values in series.values() for v in values if math.isfinite(v)]
        if finite and unit != "bytes":  # memory: auto-scaled, as Grafana does, to show a trend
            ax.set_ylim(0, max(finite) * 1.15 or 1)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p, u=unit: fmt_unit(u, v)))
        ax.set_xlabel("seconds into the run", color=TEXT, fontsize=7)
        if series:
            ax.legend(fontsize=7, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT,
                      loc="upper left", ncol=min(4, len(series)))  # fmt: skip
        else:
            ax.text(0.5, 0.5, "no data", color=TEXT, ha="center", transform=ax.transAxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=BACKGROUND)


def save(rounds: list[Round], path: Path) -> None:
    """The scrapes behind the picture, cut to the metrics the dashboard queries."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:chat|process)_[a-z_]+)", e)}
    wanted = re.compile("|".join(sorted(used)))
    data = [
        [t, [[n, sorted(labels), v] for (n, labels), v in samples.items() if wanted.match(n)]]
        for t, samples in rounds
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        json.dump(data, f)


def load(path: Path) -> list[Round]:
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    return [
        (t, {(n, frozenset(tuple(x) for x in labels)): v for n, labels, v in samples})
        for t, samples in data
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=90.0)
    parser.add_argument("--window", type=float, default=10.0, help="$__rate_interval, seconds")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "grafana-clusterchat.png"))
    parser.add_argument(
        "--scrapes",
        default=str(ROOT / "benchmarks" / "results" / "dashboard-scrapes.json.gz"),
        help="where the scrapes are saved (with --redraw: read from)",
    )
    parser.add_argument("--redraw", action="store_true", help="draw saved scrapes, no new run")
    args = parser.parse_args()
    if args.redraw:
        rounds = load(Path(args.scrapes))
        render(rounds, Path(args.out), args.window, note(args.duration, args.window))
        print(f"redrew {len(rounds)} saved scrape rounds into {args.out}")
        return
    with tempfile.TemporaryDirectory(prefix="dashboard-") as tmp:
        data = Path(tmp)
        redis = EmbeddedRedis.start(data / "redis")
        cluster = Cluster(redis.url, data, CHAT_LEASE_TTL_MS="1500")
        try:
            create = "from django.core.management import call_command\n" + "".join(
                f"call_command('createroom', {slug!r})\n" for slug in ROOMS
            )
            manage("shell", "-c", create, env=cluster.env)
            cluster.add("a")
            cluster.add("b")
            rounds = asyncio.run(run_load(cluster, args.duration))
        finally:
            cluster.close()
            redis.stop()
    save(rounds, Path(args.scrapes))
    render(rounds, Path(args.out), args.window, note(args.duration, args.window))
    print(f"{len(rounds)} scrape rounds (saved in {args.scrapes}); wrote {args.out}")


def note(duration: float, window: float) -> str:
    return (
        f"{duration:.0f} s, 37 clients on nodes a and b, node c joins at "
        f"{duration / 3:.0f} s and is killed at {2 * duration / 3:.0f} s; "
        f"$__rate_interval = {window:.0f} s"
    )


if __name__ == "__main__":
    main()
