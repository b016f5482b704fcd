#!/usr/bin/env python3
"""Turns a results.json of `bench.py` into table.md (Markdown) and chart.svg (grouped bars,
written by hand: no plotting library). Run on its own to redo both from a saved JSON:

    python3 scripts/bench/report.py bench-results/latest/results.json

Every figure printed comes from the JSON; a failed case shows as "failed" with its reason in
the notes, a skipped one as "skipped" (or "n/a"), never as a number.

When the run had a baseline (`bench.py --baseline PATH`, contender `tapsplice-base`), one more
table compares this build with it case by case; the other tables and the chart leave the
baseline out, so they read the same with or without one.
"""

import html
import math
import json
import os
import sys

CONTENDERS = ("tapsplice", "slirp4netns", "pasta", "veth", "loopback")
BASELINE = "tapsplice-base"
COLORS = {
    "tapsplice": "#1f77b4",
    "slirp4netns": "#d62728",
    "pasta": "#ff7f0e",
    "veth": "#2ca02c",
    "loopback": "#7f7f7f",
}
PATH_TEXT = {
    "outbound": "outbound",
    "fwd-lo": "forward, loopback client",
    "fwd-remote": "forward, client in a veth netns",
}


def data_dir(path, reverse):
    """Which way the data flows: container to host, or host to container."""
    to_host = (path == "outbound") != reverse
    return "ctr→host" if to_host else "host→ctr"


def lookup(results, table, **key):
    for e in results[table]:
        if all(e.get(k) == v for k, v in key.items()):
            return e
    return None


def loopback_key(key):
    """Loopback runs once (its own MTU); its figures stand for both MTU rows."""
    k = dict(key)
    k["mtu"] = 1500
    return k


def entry(results, table, contender, **key):
    if contender == "loopback":
        key = loopback_key(key)
    return lookup(results, table, contender=contender, **key)


def fmt_num(v, digits=2):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def cell(e, field, notes, digits=2):
    """median [min–max] of a field, or the status."""
    if e is None:
        return "–"
    if e["status"] == "skipped":
        return "n/a" if (e.get("reason") or "").startswith("n/a") else "skipped"
    if e["status"] != "ok" or e.get(field) is None:
        reason = e.get("reason") or "failed"
        if reason not in notes:
            notes.append(reason)
        return f"failed [{notes.index(reason) + 1}]"
    s = e[field]
    if isinstance(s, dict):
        text = fmt_num(s["median"], digits)
        if s["n"] > 1:
            text += f" [{fmt_num(s['min'], digits)}–{fmt_num(s['max'], digits)}]"
    else:
        text = fmt_num(s, digits)
    if e.get("failed_runs"):
        text += f" ({e['failed_runs']} run failed)"
    return text


def median_of(e, field):
    if e is None or e["status"] != "ok" or e.get(field) is None:
        return None
    v = e[field]
    return v["median"] if isinstance(v, dict) else v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def throughput_table(results, notes):
    n = max((len(e["runs"]) for e in results["throughput"]), default=1)
    lines = [
        f"Throughput, Gbit/s (iperf3, receiver side; median [min–max] of {n} runs)",
        "",
        "| path | data | streams | MTU | tapsplice | slirp4netns | pasta | veth | loopback "
        "| ts/pasta | ts/slirp4netns | ts/veth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in ("outbound", "fwd-lo", "fwd-remote"):
        for reverse in (False, True):
            for streams in (1, 4):
                for mtu in (1500, 65520):
                    key = dict(path=path, reverse=reverse, streams=streams, mtu=mtu)
                    es = {c: entry(results, "throughput", c, **key) for c in CONTENDERS}
                    if all(e is None for e in es.values()):
                        continue
                    cells = [cell(es[c], "gbps", notes) for c in CONTENDERS]
                    ts = median_of(es["tapsplice"], "gbps")
                    ratios = [ratio(ts, median_of(es[c], "gbps")) for c in ("pasta", "slirp4netns", "veth")]
                    label = f"{path}{' -R' if reverse else ''}"
                    lines.append(
                        f"| {label} | {data_dir(path, reverse)} | {streams} | {mtu} | "
                        + " | ".join(cells + ratios) + " |"
                    )
    return lines


def stalls_table(results, notes):
    lines = [
        "Stalls: lowest 1-second interval of any run, Gbit/s (0 means the transfer stopped for a "
        "whole second)",
        "",
        "| path | data | streams | MTU | tapsplice | slirp4netns | pasta | veth | loopback |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in ("outbound", "fwd-lo", "fwd-remote"):
        for reverse in (False, True):
            for streams in (1, 4):
                for mtu in (1500, 65520):
                    key = dict(path=path, reverse=reverse, streams=streams, mtu=mtu)
                    es = {c: entry(results, "throughput", c, **key) for c in CONTENDERS}
                    if all(e is None for e in es.values()):
                        continue
                    cells = [cell(es[c], "lowest_interval_gbps", notes) for c in CONTENDERS]
                    lines.append(
                        f"| {path}{' -R' if reverse else ''} | {data_dir(path, reverse)} | {streams} | {mtu} | "
                        + " | ".join(cells) + " |"
                    )
    return lines


def latency_table(results, notes):
    n = max((len(e["runs"]) for e in results["latency"]), default=1)
    lines = [
        "Latency, µs, 1-byte request/response (tsbench rr: p50 / p99 on one connection; crr: "
        f"connect+request+response+close per transaction, rate per second and p50; median of {n} "
        "runs). Pass `idle`: the machine as it is; `dma0`: /dev/cpu_dma_latency held at 0 (idle "
        "CPUs poll instead of halting, which removes a 50-70 µs wake-up from every round trip).",
        "",
        "| test | path | MTU | pass | tapsplice | slirp4netns | pasta | veth | loopback | ts/pasta | ts/veth |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("rr", "crr"):
        for path in ("outbound", "fwd-lo", "fwd-remote"):
            for mtu in (1500, 65520):
                for pass_ in ("idle", "dma0"):
                    key = dict(kind=kind, path=path, mtu=mtu)
                    key["pass"] = pass_
                    es = {c: entry(results, "latency", c, **key) for c in CONTENDERS}
                    if all(e is None for e in es.values()):
                        continue
                    cells = []
                    for c in CONTENDERS:
                        e = es[c]
                        if kind == "rr":
                            a = cell(e, "p50_us", notes, 1)
                            if e is not None and e["status"] == "ok":
                                a = f"{fmt_num(median_of(e, 'p50_us'), 1)} / {fmt_num(median_of(e, 'p99_us'), 1)}"
                        else:
                            a = cell(e, "rate_per_s", notes, 0)
                            if e is not None and e["status"] == "ok":
                                a = f"{median_of(e, 'rate_per_s'):.0f}/s ({fmt_num(median_of(e, 'p50_us'), 1)})"
                        cells.append(a)
                    field = "p50_us" if kind == "rr" else "rate_per_s"
                    ts = median_of(es["tapsplice"], field)
                    ratios = [ratio(ts, median_of(es[c], field)) for c in ("pasta", "veth")]
                    lines.append(f"| {kind} | {path} | {mtu} | {pass_} | " + " | ".join(cells + ratios) + " |")
    lines.append("")
    lines.append("Ratios: rr is p50 latency (lower is better), crr is the rate (higher is better).")
    return lines


def has_baseline(results):
    return BASELINE in results.get("contenders", {}) or any(
        e["contender"] == BASELINE for t in ("throughput", "latency") for e in results[t])


def overlap(a, b):
    """Whether the min–max ranges of two entries' figures overlap (None: a single run each,
    nothing to tell). With 3 runs, a ratio whose ranges overlap may well be noise."""
    if not (isinstance(a, dict) and isinstance(b, dict)) or a["n"] < 2 or b["n"] < 2:
        return "–"
    return "overlap" if a["min"] <= b["max"] and b["min"] <= a["max"] else "apart"


def geomean(values):
    values = [v for v in values if v and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def cost_table(results, notes):
    """This build against the baseline: the cases where both have a figure. Empty when no
    baseline ran, so that a run without one reads exactly as before."""
    if not has_baseline(results):
        return []
    base = results["contenders"].get(BASELINE, {})
    ts = results["contenders"].get("tapsplice", {})
    n = max((len(e["runs"]) for e in results["throughput"] if e["contender"] == BASELINE), default=1)
    lines = [
        "Cost of this build against the baseline",
        "",
        f"This build: {ts.get('version', '?')} (git {ts.get('git', results['env'].get('tapsplice_git', '?'))}); "
        f"baseline: {base.get('version', '?')} at `{base.get('path', '?')}` (sha256 {base.get('sha256', '?')}). "
        f"Both ran in the same interleaved repeats; median [min–max] of {n} runs. Ratio is "
        "tapsplice / tapsplice-base: for throughput above 1 means this build is faster, for "
        "latency below 1 means it is faster. `ranges`: whether the two min–max ranges overlap "
        "(if they do, the difference may be noise).",
        "",
        "| path | data | streams | MTU | tapsplice Gbit/s | tapsplice-base Gbit/s | ts/base | ranges |",
        "|---|---|---|---|---|---|---|---|",
    ]
    left_out = 0
    tp_ratios = []
    for path in ("outbound", "fwd-lo", "fwd-remote"):
        for reverse in (False, True):
            for streams in (1, 4):
                for mtu in (1500, 65520):
                    key = dict(path=path, reverse=reverse, streams=streams, mtu=mtu)
                    a = lookup(results, "throughput", contender="tapsplice", **key)
                    b = lookup(results, "throughput", contender=BASELINE, **key)
                    ma, mb = median_of(a, "gbps"), median_of(b, "gbps")
                    if ma is None or mb is None:
                        if (ma is None) != (mb is None):
                            left_out += 1
                        continue
                    if mb:
                        tp_ratios.append(ma / mb)
                    lines.append(
                        f"| {path}{' -R' if reverse else ''} | {data_dir(path, reverse)} | {streams} | "
                        f"{mtu} | {cell(a, 'gbps', notes)} | {cell(b, 'gbps', notes)} | "
                        f"{ratio(ma, mb)} | {overlap(a['gbps'], b['gbps'])} |")
    lat_rows = []
    lat_ratios = []
    for path in ("outbound", "fwd-lo", "fwd-remote"):
        for mtu in (1500, 65520):
            for pass_ in ("idle", "dma0"):
                key = dict(kind="rr", path=path, mtu=mtu)
                key["pass"] = pass_
                a = lookup(results, "latency", contender="tapsplice", **key)
                b = lookup(results, "latency", contender=BASELINE, **key)
                ma, mb = median_of(a, "p50_us"), median_of(b, "p50_us")
                if ma is None or mb is None:
                    if (ma is None) != (mb is None):
                        left_out += 1
                    continue
                if mb:
                    lat_ratios.append(ma / mb)
                lat_rows.append(
                    f"| rr | {path} | {mtu} | {pass_} | {cell(a, 'p50_us', notes, 1)} | "
                    f"{cell(b, 'p50_us', notes, 1)} | {ratio(ma, mb)} | {overlap(a['p50_us'], b['p50_us'])} |")
    if lat_rows:
        lines += [
            "",
            "| test | path | MTU | pass | tapsplice p50 µs | tapsplice-base p50 µs | ts/base | ranges |",
            "|---|---|---|---|---|---|---|---|",
        ] + lat_rows
    lines.append("")
    summary = []
    g = geomean(tp_ratios)
    if g is not None:
        summary.append(f"throughput {g:.2f} over {len(tp_ratios)} cases")
    g = geomean(lat_ratios)
    if g is not None:
        summary.append(f"rr p50 latency {g:.2f} over {len(lat_ratios)} cases")
    if summary:
        lines.append("Geometric mean of the ratios: " + "; ".join(summary) + ".")
    if left_out:
        lines.append(f"Left out: {left_out} case(s) with a figure for only one of the two "
                     "(see the tables below and the failures).")
    return lines


def resources_table(results, notes):
    lines = [
        "Network process: CPU seconds per GB moved (outbound, 1 stream; median) and peak RSS "
        "(VmHWM at the end of the instance, MiB; median over repeats)",
        "",
        "| contender | MTU | CPU s/GB ctr→host | CPU s/GB host→ctr | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for c in ("tapsplice", BASELINE, "slirp4netns", "pasta"):
        for mtu in (1500, 65520):
            out = entry(results, "throughput", c, path="outbound", reverse=False, streams=1, mtu=mtu)
            rev = entry(results, "throughput", c, path="outbound", reverse=True, streams=1, mtu=mtu)
            if out is None and rev is None:
                continue
            hwm = sorted(i["vmhwm_kib"] for i in results["instances"]
                         if i["contender"] == c and i["mtu"] == mtu and i.get("vmhwm_kib"))
            rss = f"{hwm[len(hwm) // 2] / 1024:.1f}" if hwm else "–"
            lines.append(f"| {c} | {mtu} | {cell(out, 'net_cpu_s_per_gb', notes)} | "
                         f"{cell(rev, 'net_cpu_s_per_gb', notes)} | {rss} |")
    lines.append("")
    lines.append("veth and loopback have no network process: the kernel does the work.")
    return lines


def header(results):
    env = results["env"]
    cont = results["contenders"]
    return [
        f"Run: {results['started_utc']}, mode `{results['mode']}` ({results['settings']['repeats']} "
        f"repeat(s), {results['settings']['seconds']} s per iperf3 run), took {results.get('duration_s', 0):.0f} s.",
        f"Machine: {env['cpu_model']}, {env['cpus']} vCPUs, {env['memory_gib']} GiB, "
        f"{env['os']}, kernel {env['kernel']}; load average {env['loadavg_start']} at start, "
        f"{env.get('loadavg_end', '?')} at end.",
        f"Versions: {cont.get('tapsplice', {}).get('version', 'tapsplice ?')} (git {env['tapsplice_git']}); "
        f"slirp4netns {env['slirp4netns_package']} (libslirp {env['libslirp_package']}); "
        f"pasta (passt) {env['passt_package']}; {env['iperf3']}.",
        "All contenders and both ends of every test share the same 2 vCPUs: every userspace path is "
        "CPU-bound, so read the ratios, not the absolute figures.",
    ]


def markdown(results):
    notes = []
    parts = [
        header(results),
        cost_table(results, notes),
        throughput_table(results, notes),
        stalls_table(results, notes),
        latency_table(results, notes),
        resources_table(results, notes),
    ]
    out = []
    for p in parts:
        if p:
            out += p + [""]
    skips = sorted({e["reason"] for t in ("throughput", "latency") for e in results[t]
                    if e["status"] == "skipped" and e.get("reason")})
    if skips:
        out.append("Not measured:")
        out.append("")
        out += [f"- {s}" for s in skips]
        out.append("")
    incidents = []
    for i in results.get("instances", []):
        what = f"{i['contender']} at MTU {i['mtu']}, repeat {i['rep'] + 1}"
        for u in i.get("unresponsive", []):
            incidents.append(f"{what}: {u}; a fresh instance ran the remaining cases")
        if i.get("exited_early"):
            incidents.append(f"{what}: the network process had exited (status {i['exited_early']})")
        if i.get("error"):
            incidents.append(f"{what}: {i['error']}")
    if incidents:
        out.append("Incidents (the contender, not the harness):")
        out.append("")
        out += [f"- {t}" for t in incidents]
        out.append("")
    if notes:
        out.append("Failures:")
        out.append("")
        out += [f"{i}. {n}" for i, n in enumerate(notes, 1)]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# SVG


def esc(s):
    return html.escape(str(s), quote=True)


def panel(svg, x0, y0, width, height, title, unit, groups, log=False):
    """Grouped bars. groups: [(label, [(contender, value|None, status)])]."""
    values = [v for _, bars in groups for _, v, _ in bars if v]
    vmax = max(values) if values else 1
    raw = vmax / 5
    exp = 10 ** math.floor(math.log10(raw))
    tick = next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= raw)
    top = tick * 5
    plot_x, plot_y = x0 + 55, y0 + 30
    plot_w, plot_h = width - 70, height - 80
    svg.append(f'<text x="{x0 + 10}" y="{y0 + 18}" class="title">{esc(title)}</text>')
    for i in range(6):
        v = tick * i
        y = plot_y + plot_h - v / top * plot_h
        svg.append(f'<line x1="{plot_x}" y1="{y:.1f}" x2="{plot_x + plot_w}" y2="{y:.1f}" class="grid"/>')
        svg.append(f'<text x="{plot_x - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{fmt_num(v, 1)}</text>')
    svg.append(f'<text x="{x0 + 12}" y="{plot_y + plot_h / 2:.0f}" class="axis" '
               f'transform="rotate(-90 {x0 + 12} {plot_y + plot_h / 2:.0f})" text-anchor="middle">{esc(unit)}</text>')
    gw = plot_w / max(1, len(groups))
    for gi, (label, bars) in enumerate(groups):
        gx = plot_x + gi * gw
        bw = (gw - 14) / max(1, len(bars))
        for bi, (c, v, status) in enumerate(bars):
            bx = gx + 7 + bi * bw
            if v is not None and status == "ok":
                h = max(1.0, v / top * plot_h)
                y = plot_y + plot_h - h
                svg.append(f'<rect x="{bx:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                           f'fill="{COLORS[c]}"><title>{esc(c)}: {fmt_num(v)} {esc(unit)}</title></rect>')
                svg.append(f'<text x="{bx + (bw - 2) / 2:.1f}" y="{y - 3:.1f}" class="val" '
                           f'text-anchor="middle">{fmt_num(v, 1)}</text>')
            else:
                mark = {"failed": "fail", "skipped": "skip"}.get(status, "n/a")
                svg.append(f'<text x="{bx + (bw - 2) / 2:.1f}" y="{plot_y + plot_h - 4:.1f}" class="na" '
                           f'text-anchor="middle" transform="rotate(-90 {bx + (bw - 2) / 2:.1f} '
                           f'{plot_y + plot_h - 4:.1f})" dy="3">{mark}</text>')
        for li, part in enumerate(label.split("\n")):
            svg.append(f'<text x="{gx + gw / 2:.1f}" y="{plot_y + plot_h + 16 + li * 13:.1f}" '
                       f'class="axis" text-anchor="middle">{esc(part)}</text>')
    svg.append(f'<line x1="{plot_x}" y1="{plot_y + plot_h}" x2="{plot_x + plot_w}" '
               f'y2="{plot_y + plot_h}" class="base"/>')


def bars_for(results, table, field, key):
    out = []
    for c in CONTENDERS:
        e = entry(results, table, c, **key)
        if e is None:
            out.append((c, None, "n/a"))
        elif e["status"] == "skipped" and (e.get("reason") or "").startswith("n/a"):
            out.append((c, None, "n/a"))
        else:
            out.append((c, median_of(e, field), e["status"]))
    return out


def svg(results):
    width = 1100
    parts = []
    tp_groups = []
    for mtu in (1500, 65520):
        for reverse in (False, True):
            for streams in (1, 4):
                key = dict(path="outbound", reverse=reverse, streams=streams, mtu=mtu)
                label = f"MTU {mtu}\n{data_dir('outbound', reverse)}, {streams} stream{'s' if streams > 1 else ''}"
                tp_groups.append((label, bars_for(results, "throughput", "gbps", key)))
    fwd_groups = []
    for path in ("fwd-lo", "fwd-remote"):
        for mtu in (1500, 65520):
            for reverse in (False, True):
                key = dict(path=path, reverse=reverse, streams=1, mtu=mtu)
                label = f"{'lo client' if path == 'fwd-lo' else 'netns client'} {mtu}\n{data_dir(path, reverse)}"
                fwd_groups.append((label, bars_for(results, "throughput", "gbps", key)))
    lat_groups = []
    for kind in ("rr",):
        for path in ("outbound", "fwd-lo", "fwd-remote"):
            for mtu in (1500, 65520):
                key = dict(kind=kind, path=path, mtu=mtu)
                key["pass"] = "dma0"
                lat_groups.append((f"{path}\nMTU {mtu}", bars_for(results, "latency", "p50_us", key)))
    height = 40 + 3 * 300 + 30
    parts.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                 f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif">')
    parts.append("<style>.title{font-size:15px;font-weight:bold}.axis{font-size:11px;fill:#333}"
                 ".val{font-size:9px;fill:#222}.na{font-size:9px;fill:#999}.grid{stroke:#ddd;stroke-width:1}"
                 ".base{stroke:#333;stroke-width:1}.legend{font-size:12px}.sub{font-size:11px;fill:#555}</style>")
    parts.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    env = results["env"]
    parts.append(f'<text x="10" y="18" class="sub">tapsplice benchmark, {esc(results["started_utc"][:10])}, '
                 f'{esc(results["mode"])} mode; {esc(env["cpu_model"])}, {env["cpus"]} vCPUs, kernel '
                 f'{esc(env["kernel"])}; taller is better except latency</text>')
    lx = 10
    for c in CONTENDERS:
        parts.append(f'<rect x="{lx}" y="26" width="12" height="12" fill="{COLORS[c]}"/>')
        parts.append(f'<text x="{lx + 16}" y="37" class="legend">{esc(c)}</text>')
        lx += 16 + 8 * len(c) + 24
    panel(parts, 0, 45, width, 300, "Outbound throughput (container ↔ host loopback via the gateway)",
          "Gbit/s", tp_groups)
    panel(parts, 0, 345, width, 300, "Port-forward throughput, 1 stream (client on host loopback or in a veth netns, server in the container)",
          "Gbit/s", fwd_groups)
    panel(parts, 0, 645, width, 300, "Request/response latency p50, 1 byte (lower is better; cpu_dma_latency 0)",
          "µs", lat_groups)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write(results, outdir):
    with open(os.path.join(outdir, "table.md"), "w") as f:
        f.write(markdown(results))
    with open(os.path.join(outdir, "chart.svg"), "w") as f:
        f.write(svg(results))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RESULTS.json")
    path = sys.argv[1]
    with open(path) as f:
        res = json.load(f)
    write(res, os.path.dirname(os.path.abspath(path)))
    print(f"wrote table.md and chart.svg beside {path}")
