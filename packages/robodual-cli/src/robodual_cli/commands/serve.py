"""``robodual serve`` and ``robodual bench serve``: a policy over websockets, and its overhead."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import typer

from robodual_cli.console import err, out
from robodual_core.cli_groups import group
from robodual_core.errors import RobodualError


def _load(policy: Path, kind: str, mode: str, unnorm_key: str | None = None):
    from robodual_core.runtime import load_policy

    return load_policy(policy, kind=kind, mode=mode, unnorm_key=unnorm_key)


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        policy: Path = typer.Option(..., "--policy", help="Run folder or checkpoint folder."),
        host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback unless told otherwise)."),
        port: int = typer.Option(8000, "--port", help="TCP port."),
        token: str | None = typer.Option(None, "--token", envvar="ROBODUAL_SERVE_TOKEN",
                                         help="Require 'Authorization: Bearer TOKEN' on every connection."),
        mode: str = typer.Option("async", "--mode", help="async (real robots) or sync."),
        kind: str = typer.Option("auto", "--kind", help="auto, dual, specialist or generalist."),
        unnorm_key: str | None = typer.Option(None, "--unnorm-key",
                                              help="Dataset of an OpenVLA checkpoint's norm_stats whose statistics "
                                                   "turn its actions into robot units (predict_action's unnorm_key; "
                                                   "needed when it holds several)."),
        max_message_mb: float = typer.Option(16.0, "--max-message-mb",
                                             help="Largest accepted request in MiB (larger ones close their "
                                                  "connection unread)."),
        max_connections: int = typer.Option(8, "--max-connections",
                                            help="Most clients served at once (more get HTTP 503); with "
                                                 "--max-message-mb it bounds the server's memory."),
        handshake_timeout: float = typer.Option(10.0, "--handshake-timeout",
                                                help="Seconds a client has to send its connection request "
                                                     "(slower ones are dropped)."),
        message_timeout: float = typer.Option(30.0, "--message-timeout",
                                              help="Seconds from a message's first byte to its last (a slower "
                                                   "client is disconnected, freeing its slot)."),
    ) -> None:
        """Serve a policy to robots over websockets (msgpack; one runtime session per connection)."""
        from robodual_core.serve import (
            PolicyServer,
            check_limits,
            check_token,
            message_bytes_from_mb,
            policy_metadata,
        )

        # every flag is checked before the policy is loaded or a socket bound
        max_bytes = message_bytes_from_mb(max_message_mb)
        check_limits(port=port, max_message_bytes=max_bytes, max_connections=max_connections,
                     handshake_timeout=handshake_timeout, message_timeout=message_timeout)
        check_token(token)
        if mode not in ("async", "sync"):
            raise RobodualError(f"--mode must be async or sync, found '{mode}'")
        if host not in ("127.0.0.1", "localhost", "::1") and token is None:
            err.print(f"[yellow]warning[/]: serving on {host} without --token: anyone who can reach it can drive "
                      "the robot")
        base = _load(policy, kind, mode, unnorm_key)
        server = PolicyServer(base.new_session, policy_metadata(base, mode, str(policy)), token=token,
                              max_message_bytes=max_bytes, max_connections=max_connections,
                              handshake_timeout=handshake_timeout, message_timeout=message_timeout)
        shown = f"[{host}]" if ":" in host else host

        def bound(actual: int) -> None:
            out.print(f"serving {policy} ({type(base).__name__}, {mode}) on ws://{shown}:{actual}  health: "
                      f"http://{shown}:{actual}/healthz  (at most {max_connections} connections, "
                      f"{max_message_mb:g} MiB per message)", markup=False, highlight=False, soft_wrap=True)
            out.file.flush()

        try:
            asyncio.run(server.serve_forever(host, port, on_bound=bound))
        except OSError as exc:
            raise RobodualError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    bench = group(app, "bench")

    @bench.command("serve")
    def bench_serve(
        policy: Path = typer.Option(..., "--policy", help="Run folder or checkpoint folder."),
        dataset: Path = typer.Option(..., "--dataset", help="Store to take observations from."),
        steps: int = typer.Option(50, "--steps", help="Control steps per measurement."),
        mode: str = typer.Option("sync", "--mode", help="Runtime mode for both sides."),
        kind: str = typer.Option("auto", "--kind", help="auto, dual, specialist or generalist."),
        out_file: Path = typer.Option(Path("bench_out/serve.json"), "--out", help="JSON report path."),
    ) -> None:
        """Round-trip latency and control rate over loopback vs the in-process policy, in one run."""
        import numpy as np

        from robodual_cli.commands.eval_offline import (
            KINDS,
            MODES,
            check_choice,
            check_min,
            check_policy_dir,
            observation_keys,
        )
        from robodual_core.bench import write_report
        from robodual_core.client import RemotePolicy
        from robodual_core.data import open_dataset
        from robodual_core.serve import PolicyServer, policy_metadata

        check_min("--steps", steps, 1, "a number of control steps")
        check_choice("--mode", mode, MODES)
        check_choice("--kind", kind, KINDS)
        check_policy_dir("--policy", policy)
        base = _load(policy, kind, mode)
        ds = open_dataset(dataset)
        keys = observation_keys(ds, base)
        ep = ds.episode(0, keys)
        frames = [{k: np.ascontiguousarray(v[t]) for k, v in ep.items()} for t in range(len(next(iter(ep.values()))))]
        instruction = ds.instructions[0]

        def drive(pol) -> list[float]:
            pol.reset()
            times = []
            for t in range(steps):
                t0 = time.perf_counter()
                pol.step(frames[t % len(frames)], instruction)
                times.append(time.perf_counter() - t0)
            return times

        local = base.new_session()
        drive(local)  # warm-up
        local_times = drive(local)
        server = PolicyServer(base.new_session, policy_metadata(base, mode, str(policy)))
        server.start_in_thread("127.0.0.1", 0)
        with RemotePolicy(f"ws://127.0.0.1:{server.port}") as remote:
            drive(remote)
            remote_times = drive(remote)
        server.stop()
        lm, rm = float(np.median(local_times)), float(np.median(remote_times))
        results = {"steps": steps, "mode": mode, "in_process_median_ms": lm * 1e3, "remote_median_ms": rm * 1e3,
                   "in_process_hz": 1 / lm, "remote_hz": 1 / rm, "overhead_ratio": (rm - lm) / lm,
                   "target": "overhead under 20% of the in-process step"}
        write_report(out_file, "serve", results)
        out.print(f"in-process {lm * 1e3:.2f} ms, over loopback {rm * 1e3:.2f} ms: overhead "
                  f"{100 * (rm - lm) / lm:.1f}% ({out_file})")
