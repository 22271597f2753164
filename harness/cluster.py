"""Starting or joining the Ray a study runs on: a local instance with its dashboard, the
console's noise, and placement groups that ended jobs left behind."""
from __future__ import annotations

import logging
import os
import socket

import ray

from .study import StudyError
from .synth import default_cache_dir

TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"
AUTH_MODE_ENV, TOKEN_COMMAND = "RAY_AUTH_MODE", "`ray get-auth-token`"  # Ray's token authentication


def quiet_ray_console(verbose: bool) -> None:
    """Without --verbose, the console shows the harness's own lines: Ray's notices that repeat
    them (the dashboard address, the token) and Tune's experiment box are left out."""
    if verbose:
        return
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.tune").addFilter(_not_tunes_resume_advice)
    # After Ctrl+C, Tune warns that trials stopped before their first report have no metrics.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.WARNING)  # "A new study created in memory..."
    # Tune's newer console output prints its box and results path whatever `verbose` says;
    # the classic reporter at verbose=0 prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A failed trial is one line (TrialRecorder) naming the error and its error.txt, not a traceback.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")


def _not_tunes_resume_advice(record: logging.LogRecord) -> bool:
    """After Ctrl+C Tune says to resume with `Tuner.restore(...)` and lists the stopped trials;
    the harness says to run the same command again."""
    return not str(record.msg).startswith(("Experiment has been interrupted", "Trials did not complete"))


def check_address(address: str | None) -> str | None:
    """The cluster address to join (as given, or from RAY_ADDRESS), or None for a local Ray of our
    own. Stops at once (StudyError) on an address nothing answers at, `auto` included: Ray would
    retry an unreachable GCS for ever, printing a warning every few seconds."""
    named, address = _named(address), address or os.environ.get("RAY_ADDRESS")
    if not address or address == "local":
        return None
    if address == "auto":  # joined as "auto": Ray then reads the token of a cluster with token authentication
        _check_host_port(named, _ray_on_this_machine(named))
        return "auto"
    _check_host_port(named, address)
    if not address.startswith("ray://"):
        _check_token(named, address)
    return address


def _check_token(named: str, address: str) -> None:
    """A cluster with token authentication refuses a driver without the token, which Ray sends
    to an address given explicitly only with RAY_AUTH_MODE=token: ray.init then retries for
    ever, a warning a second. Asked here once, with a timeout."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    from .prepare import quiet_stderr  # the GCS client's own warning line: the message below says it

    try:
        with quiet_stderr():
            GcsClient(address=address).internal_kv_get(b"harness-probe", None, timeout=10)
    except AuthenticationError:
        raise StudyError(f"{named}: that cluster asks for Ray's token: set {AUTH_MODE_ENV}=token, with the token "
                         f"in RAY_AUTH_TOKEN or ~/.ray/auth_token ({TOKEN_COMMAND} on its head prints it)") from None
    except Exception:  # noqa: BLE001 - anything else (a busy GCS): ray.init says what it is
        pass


def _check_host_port(named: str, address: str) -> None:
    if address.startswith(("http://", "https://")):
        raise StudyError(f"{named}: that is the dashboard's (jobs) address; give the cluster's address "
                         f"(head:6379), or run the command as a job: "
                         f"ray job submit --address {address} -- harness run ...")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
            pass
    except ValueError:
        raise StudyError(f"{named}: expected host:port (the head node's GCS, e.g. head:6379) or auto") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__.lower().replace("error", "")
        raise StudyError(f"{named}: no Ray cluster answers there ({reason or 'timed out'})") from None


def _ray_on_this_machine(named: str) -> str:
    """What `auto` joins, as Ray finds it (the cluster `ray start` made last), said once here
    rather than in Ray's warning on every connection when several run."""
    from ray._private import services

    logging.getLogger(services.__name__).setLevel(logging.ERROR)  # "Found multiple active Ray instances"
    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise StudyError(f"{named}: no Ray is running on this machine (`ray start --head` starts one; "
                         "without --address the harness starts its own)") from None
    running = services.find_gcs_addresses()
    if len(running) > 1:
        print(f"{len(running)} Ray clusters run on this machine ({', '.join(sorted(running))}): joining {found}, "
              "the one `ray start` made last (--address HOST:PORT names another)", flush=True)
    return found


def _named(address: str | None) -> str:
    """How an error names the address: the option, or the variable it came from."""
    return f"--address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"


def start_ray(address: str | None, verbose: bool = False) -> bool:
    """Join `address` (or RAY_ADDRESS), else start a local Ray with the dashboard on 127.0.0.1.
    Returns whether it joined a cluster (one that outlives this driver)."""
    named, address = _named(address), address or os.environ.get("RAY_ADDRESS")
    # The data settings the workers read (named here: harness.data imports torch, the driver does not).
    env = {k: os.environ[k] for k in ("VIDEOMAE_HARNESS_CACHE", "VIDEOMAE_HARNESS_DECODE_CACHE_MB") if k in os.environ}
    if "VIDEOMAE_HARNESS_CACHE" in env:  # as this shell means it: a trial runs in a working folder of its own
        env["VIDEOMAE_HARNESS_CACHE"] = str(default_cache_dir().absolute())
    # Ray Train's controller polls its workers this often (default 2 s), and a stage's start
    # and end each wait for polls: 0.5 s saves a few seconds per trial (BENCHMARKS.md).
    env[TRAIN_POLL_ENV] = os.environ.get(TRAIN_POLL_ENV, TRAIN_POLL_S)
    quiet_ray_console(verbose)
    level = logging.INFO if verbose else logging.WARNING
    if address:  # run_study has probed it (check_address)
        try:
            context = ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=verbose,
                               logging_level=level)
        except ConnectionError as error:  # "auto" with no Ray running here, or no GCS at host:port
            hint = (" on this machine (`ray start --head` starts one; without --address the harness "
                    "starts its own)") if address == "auto" else ""
            raise StudyError(f"{named}: {str(error).split('. ')[0]}{hint}") from None
    else:
        others = _raylets_running()
        # The dashboard must run: without it Train-inside-Tune leaks placement groups (notes/ray.md).
        # address="local": always a new instance, never a cluster that happens to run here.
        group = _daemons_in_a_group_of_their_own()
        context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                           log_to_driver=verbose, logging_level=level, runtime_env={"env_vars": env})
        if group is not None:
            _back_to_group(group)
    url = context.dashboard_url
    joined = f"cluster {context.address_info.get('gcs_address', address)}" if address else "started locally"
    print(f"Ray {joined}; dashboard: {'http://' + url if url else 'not running'}", flush=True)
    if url and not address and os.environ.get(AUTH_MODE_ENV, "").lower() == "token":
        # Ray turned on token authentication for the new cluster: the dashboard asks for it.
        print(f"  the dashboard asks for Ray's token: {TOKEN_COMMAND} prints it", flush=True)
    if not address and others:  # each local Ray schedules onto every CPU, unaware of the other
        print(f"  another Ray already runs on this machine ({others} raylet process{'es' * (others > 1)}): its "
              f"work and this study's share the {os.cpu_count()} CPUs and run slower (clips/s and times "
              f"too); to queue the trials of every study on one Ray instead: `ray start --head`, then "
              f"`harness run ... --address auto`", flush=True)
    return bool(address)


def _daemons_in_a_group_of_their_own() -> int | None:
    """Start the local Ray's processes outside this command's process group, so that a stop sent
    to the group (`timeout`, `kill -- -PGID`, a terminal's Ctrl+C) reaches the driver, which stops
    the study and saves Tune's state, and not the GCS and raylet, which died at once and left it
    waiting a minute for them. Returns the group to go back to (None: left as it is; a session
    leader cannot leave its group)."""
    if not hasattr(os, "setpgid") or os.getsid(0) == os.getpid():
        return None
    group = os.getpgrp()
    try:
        os.setpgid(0, 0)  # Ray's processes, started now, are born into this new group
    except OSError:
        return None
    return group


def _back_to_group(group: int) -> None:
    try:
        os.setpgid(0, group)
    except OSError:  # the group is gone (its other members ended): stay in the new one
        pass


def _raylets_running() -> int:
    """Ray's per-node daemons running on this machine (Linux's /proc; elsewhere 0)."""
    count = 0
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            try:
                with open(f"{entry.path}/comm") as name:
                    count += name.read().strip() == "raylet"
            except OSError:  # it ended
                pass
    return count


def remove_leaked_placement_groups() -> int:
    """Remove the placement groups that jobs no longer running left behind; returns how many.

    Ray removes a job's (non-detached) placement groups when it ends, but a Ray Train worker
    group's can outlive a driver killed with kill -9 (seen with Ray 2.60 on a 2-node cluster).
    Left there, the CPUs it reserves stop a rerun of the study from ever scheduling a worker."""
    from ray._private.state import jobs
    from ray.util.placement_group import PlacementGroup
    from ray.util.state import list_placement_groups

    try:
        dead = {job["JobID"] for job in jobs() if job.get("IsDead")}
        groups = list_placement_groups(filters=[("state", "!=", "REMOVED")], detail=True, limit=10_000,
                                       raise_on_missing_output=False)
    except Exception as error:  # the state API needs the dashboard; without it, nothing to do here
        print(f"  (could not list placement groups: {type(error).__name__})", flush=True)
        return 0
    leaked = [group for group in groups if group.creator_job_id in dead and not group.is_detached]
    for group in leaked:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group.placement_group_id)))
    if leaked:
        print(f"Removed {len(leaked)} placement group(s) left by ended jobs", flush=True)
    return len(leaked)
