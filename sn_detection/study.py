"""The norm study: one config trained and evaluated once per (norm, seed), each run a training
process of its own in ``<output>/runs/<norm>/seed<k>``, then the table and curves
(:mod:`sn_detection.analysis.study_results`).

:func:`prepare_study` checks everything before anything trains (an error is a :class:`StudyError`
naming the problem and the fix); :func:`run_study` trains the runs not yet finished and writes the
results. A run's ``run.json`` records its settings (the merged config) and its result; a run
folder is locked (``.lock``, held by the study and inherited by its training process) while a
process works in it, and a training process dies with the study.
"""

import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog

from .analysis.metrics import read_metrics_json, run_summary
from .analysis.report import write_files
from .analysis.shares import AnalysisError, load_shares
from .analysis.study_results import (
    FAILED,
    FINISHED,
    curves_pngs,
    results_csv,
    results_json,
    results_markdown,
    table_rows,
)
from .config import add_sn_config
from .data.user_coco import DATASETS_ENV, check_coco_files, env_value, register_coco_datasets
from .layers.norm import valid_norm_names
from .utils.cli import InputError
from .utils.file_io import atomic_write

NORM_KEYS = (
    "MODEL.RESNETS.NORM",
    "MODEL.FPN.NORM",
    "MODEL.ROI_BOX_HEAD.NORM",
    "MODEL.ROI_MASK_HEAD.NORM",
)
SN_NORMS = ("SN", "SyncSN", "SSN", "SyncSSN")
COCO_TRAIN, COCO_TEST = "norm_study_train", "norm_study_test"  # names of --coco-* in every process
RUN_RECORD, LOCK_FILE, LOG_FILE = "run.json", ".lock", "train.log"
RESULT_FILES = ("results.md", "results.csv", "results.json", "ap_curve.png", "loss.png")
LOG_TAIL = 20  # lines of a failed run's log kept in its record
UNSET_KEYS = ("OUTPUT_DIR",)  # differs between runs by construction: not a setting
_PR_SET_PDEATHSIG = 1


class StudyError(InputError):
    """A problem found before training; the message names it and the fix."""


@dataclass
class Study:
    """What to run, checked: the config file, the overrides common to all runs, and where."""

    config_file: str
    overrides: List[str]
    norms: List[str]
    seeds: List[int]
    output: str
    num_gpus: int
    train_command: List[str]  # the training program, e.g. [python, tools/train_net.py]
    datasets: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # --coco-* files
    retrain: bool = False
    jobs: int = 1  # runs side by side (CPU studies)

    def run_dir(self, norm: str, seed: int) -> str:
        return os.path.join(self.output, "runs", norm, f"seed{seed}")

    def run_overrides(self, norm: str, seed: int) -> List[str]:
        """Every KEY VALUE pair of the (norm, seed) run."""
        return [*self.overrides, *norm_overrides(norm), "SEED", str(seed)]

    def settings(self, norm: str, seed: int) -> Dict[str, Any]:
        """What the (norm, seed) run trains with: the merged config (as flat KEY: value) and the
        user's files, as recorded in its run.json."""
        cfg = load_config(self.config_file, self.run_overrides(norm, seed))
        return {
            "config_file": self.config_file,
            "overrides": list(self.overrides),
            "config": flat_config(cfg),
            "datasets": {name: list(files) for name, files in self.datasets.items()},
        }


def norm_overrides(norm: str) -> List[str]:
    """KEY VALUE pairs that put ``norm`` in every norm key (FrozenBN: the backbone only)."""
    pairs = []
    for key in NORM_KEYS:
        pairs += [key, norm if norm != "FrozenBN" or key == NORM_KEYS[0] else ""]
    return pairs


def _on_cpu(cfg: CfgNode) -> bool:
    return cfg.MODEL.DEVICE == "cpu" or not torch.cuda.is_available()


def default_norms(cfg: CfgNode, num_gpus: int) -> List[str]:
    """FrozenBN where MODEL.WEIGHTS is set, BN, GN, SN, SSN, and on several processes the
    synchronized ones (SyncBN, naiveSyncBN on the CPU; SyncSN, SyncSSN)."""
    norms = (["FrozenBN"] if cfg.MODEL.WEIGHTS else []) + ["BN", "GN"]
    if num_gpus > 1:
        norms.append("naiveSyncBN" if _on_cpu(cfg) else "SyncBN")
    return norms + ["SN", "SSN"] + (["SyncSN", "SyncSSN"] if num_gpus > 1 else [])


def load_config(config_file: str, overrides: Sequence[str]) -> CfgNode:
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(overrides))
    return cfg


def flat_config(cfg: CfgNode, prefix: str = "") -> Dict[str, Any]:
    """{"SOLVER.MAX_ITER": 600, ...}: every key of ``cfg`` with its value as JSON has it (tuples
    as lists), the keys that differ between runs by construction left out."""
    out: Dict[str, Any] = {}
    for key, value in cfg.items():
        name = prefix + key
        if isinstance(value, CfgNode):
            out.update(flat_config(value, name + "."))
        elif name not in UNSET_KEYS:
            out[name] = json.loads(json.dumps(value))
    return out


def settings_difference(trained: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """What differs between two runs' settings, one phrase per key ("SOLVER.MAX_ITER 30, now 4")."""
    if "config" not in trained:
        return ["no settings recorded (a run of an earlier version)"]
    diffs = []
    old_config, new_config = trained["config"], now["config"]
    for key in sorted(set(old_config) | set(new_config)):
        a, b = old_config.get(key, "(unset)"), new_config.get(key, "(unset)")
        if a != b:
            diffs.append(f"{key} {json.dumps(a)}, now {json.dumps(b)}")
    if trained.get("datasets", {}) != now["datasets"]:
        diffs.append(f"COCO files {trained.get('datasets')}, now {now['datasets']}")
    return diffs


# -- checks before training --------------------------------------------------------------------


def _check_output(output: str) -> str:
    if os.path.exists(output) and not os.path.isdir(output):
        raise StudyError(f"--output {output} is a file; give a folder (created if missing)")
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as e:
        raise StudyError(f"--output {output} cannot be created ({e.strerror}); give another folder")
    if not os.access(output, os.W_OK | os.X_OK):
        raise StudyError(f"--output {output} is not writable; give a folder you can write to")
    return os.path.abspath(output)


def _datasets(
    coco_train: Optional[Sequence[str]],
    coco_test: Optional[Sequence[str]],
    dataset_train: Optional[str],
    dataset_test: Optional[str],
) -> Tuple[Dict[str, Sequence[str]], List[str]]:
    """The --coco-* files by the name they are registered under, and the DATASETS.* overrides."""
    files, overrides = {}, []
    for given_files, name, key, given_name in (
        (coco_train, COCO_TRAIN, "DATASETS.TRAIN", dataset_train),
        (coco_test, COCO_TEST, "DATASETS.TEST", dataset_test),
    ):
        if given_files and given_name:
            flag = key.split(".")[1].lower()
            raise StudyError(f"give --coco-{flag} or --dataset-{flag}, not both")
        if given_files:
            files[name] = given_files
            given_name = name
        if given_name:
            overrides += [key, f"('{given_name}',)"]
    return files, overrides


def _check_registered(cfg: CfgNode) -> None:
    registered = set(DatasetCatalog.list())
    for key in ("TRAIN", "TEST"):
        unknown = [n for n in cfg.DATASETS[key] if n not in registered]
        if unknown:
            raise StudyError(
                f"dataset {unknown[0]!r} (DATASETS.{key}) is not registered; give a registered "
                f"name (e.g. sn_clutter_{key.lower().replace('test', 'val')}) with "
                f"--dataset-{key.lower()}, or COCO files with --coco-{key.lower()} JSON IMAGE_DIR"
            )
    if len(cfg.DATASETS.TEST) != 1:
        raise StudyError(f"DATASETS.TEST must name one dataset, got {list(cfg.DATASETS.TEST)}")


def _check_norms(norms: Sequence[str], cfg: CfgNode) -> None:
    valid = ["FrozenBN", *(n for n in valid_norm_names() if n and n != "FrozenBN")]
    for norm in norms:
        if norm not in valid:
            raise StudyError(f"invalid norm {norm!r}; valid norms: {', '.join(valid)}")
        if norm == "FrozenBN" and not cfg.MODEL.WEIGHTS:
            raise StudyError(
                "FrozenBN freezes pretrained BN statistics: it needs MODEL.WEIGHTS (from scratch, "
                "compare BN, GN, SN)"
            )
        if norm in ("SyncBN", "nnSyncBN") and _on_cpu(cfg):
            raise StudyError(
                f"{norm} (torch's SyncBatchNorm) runs on CUDA only; on the CPU use naiveSyncBN"
            )
    if len(set(norms)) != len(norms):
        raise StudyError(f"--norms has repeats: {list(norms)}")


def prepare_study(
    config_file: str,
    opts: Sequence[str],
    output: str,
    train_command: Sequence[str],
    norms: Optional[Sequence[str]] = None,
    seeds: Sequence[int] = (0, 1),
    num_gpus: int = 1,
    ims_per_gpu: Optional[int] = None,
    eval_period: Optional[int] = None,
    coco_train: Optional[Sequence[str]] = None,
    coco_test: Optional[Sequence[str]] = None,
    dataset_train: Optional[str] = None,
    dataset_test: Optional[str] = None,
    retrain: bool = False,
    jobs: int = 1,
) -> Study:
    """The study checked before anything trains: config and overrides, seeds, norms, dataset
    names and the user's COCO files (registered here), the output folder. ``TEST.EVAL_PERIOD``
    is the config's unless ``eval_period`` is given; nothing the user set is replaced.

    Raises:
        StudyError: naming the problem and the fix.
    """
    if not os.path.isfile(config_file):
        raise StudyError(f"--config-file {config_file} does not exist")
    overrides = list(opts)
    if len(overrides) % 2:
        raise StudyError(f"config overrides must be KEY VALUE pairs, got {' '.join(overrides)}")
    if num_gpus < 1 or (ims_per_gpu is not None and ims_per_gpu < 1) or jobs < 1:
        raise StudyError("--num-gpus, --ims-per-gpu and --jobs must be at least 1")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise StudyError(
            f"--seeds {negative[0]}: seeds are non-negative integers (detectron2 draws a random "
            "seed for a negative one, which the table could not report)"
        )
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds has repeats: {list(seeds)}")
    given = overrides[::2]
    for key in ("SEED", "OUTPUT_DIR"):
        if key in given:
            raise StudyError(
                f"{key} is set by the study for each run; remove it from the overrides"
            )
    if eval_period is not None:
        if eval_period < 0:
            raise StudyError(
                f"--eval-period must be 0 (at the end only) or more, got {eval_period}"
            )
        if "TEST.EVAL_PERIOD" in given:
            raise StudyError("give --eval-period or TEST.EVAL_PERIOD, not both")
        overrides += ["TEST.EVAL_PERIOD", str(eval_period)]
    coco, dataset_overrides = _datasets(coco_train, coco_test, dataset_train, dataset_test)
    overrides += dataset_overrides
    if ims_per_gpu:
        batch = str(ims_per_gpu * num_gpus)
        overrides += ["SOLVER.IMS_PER_BATCH", batch, "SOLVER.REFERENCE_WORLD_SIZE", "0"]
    try:
        cfg = load_config(config_file, overrides)
    except (KeyError, ValueError, TypeError, AssertionError) as e:  # yacs: key, type, value
        raise StudyError(f"{config_file} with the overrides: {type(e).__name__}: {e}") from None
    if cfg.SOLVER.MAX_ITER <= 0:
        raise StudyError(f"SOLVER.MAX_ITER is {cfg.SOLVER.MAX_ITER}: give a positive count")
    if cfg.TEST.EVAL_PERIOD < 0:
        raise StudyError(f"TEST.EVAL_PERIOD is {cfg.TEST.EVAL_PERIOD}: give 0 (at the end) or more")
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    datasets = {
        name: check_coco_files(f"--coco-{name.split('_')[-1]}", files, num_classes)
        for name, files in coco.items()
    }
    try:
        register_coco_datasets(datasets)
    except InputError as e:
        raise StudyError(str(e)) from None
    _check_registered(cfg)
    if jobs > 1 and not _on_cpu(cfg):
        raise StudyError(
            f"--jobs {jobs} runs trainings side by side on the CPU; on GPUs a run takes "
            "--num-gpus of them: give --jobs 1, or MODEL.DEVICE cpu"
        )
    norms = list(norms or default_norms(cfg, num_gpus))
    _check_norms(norms, cfg)
    return Study(
        config_file=os.path.abspath(config_file),
        overrides=overrides,
        norms=norms,
        seeds=list(seeds),
        output=_check_output(output),
        num_gpus=num_gpus,
        train_command=list(train_command),
        datasets=datasets,
        retrain=retrain,
        jobs=jobs,
    )


# -- the run folders: records and locks --------------------------------------------------------


def read_record(run_dir: str) -> Optional[Dict[str, Any]]:
    """The run's record (run.json), None if there is none.

    Raises:
        StudyError: for a record that is not a JSON object with a status (naming the file)."""
    path = os.path.join(run_dir, RUN_RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        record, reason = None, f"not JSON ({e})"
    else:
        reason = "not a run record (no status)"
    if not isinstance(record, dict) or record.get("status") not in (FINISHED, FAILED):
        raise StudyError(
            f"{path} is {reason}: delete it to train the run again, or give a new --output"
        )
    return record


@contextlib.contextmanager
def locked_runs(study: Study) -> Iterator[Dict[Tuple[str, int], int]]:
    """Lock every run folder of the study (``<run>/.lock``, created if needed) for the block;
    yields the lock files' descriptors by (norm, seed), which the training processes inherit, so
    a folder stays locked while any of them lives.

    Raises:
        StudyError: naming the folder and the process (pid) that holds it."""
    fds: Dict[Tuple[str, int], int] = {}
    try:
        for seed in study.seeds:
            for norm in study.norms:
                run_dir = study.run_dir(norm, seed)
                os.makedirs(run_dir, exist_ok=True)
                path = os.path.join(run_dir, LOCK_FILE)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
                    os.close(fd)
                    raise StudyError(
                        f"{run_dir} is in use by a live process ({holder}): another study or a "
                        "training it started works there; stop it (kill PID) or wait, or give "
                        "another --output"
                    ) from None
                fds[(norm, seed)] = fd
                _note_holder(fd, f"study pid {os.getpid()}")
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def _note_holder(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def plan(study: Study) -> Dict[Tuple[str, int], Optional[Dict[str, Any]]]:
    """{(norm, seed): the finished record to reuse, or None to train}. A finished run trained
    with other settings is refused (naming the difference) unless ``study.retrain``.

    Raises:
        StudyError: for a corrupt record, or settings that differ without ``retrain``."""
    out: Dict[Tuple[str, int], Optional[Dict[str, Any]]] = {}
    for seed in study.seeds:
        for norm in study.norms:
            record = read_record(study.run_dir(norm, seed))
            if record is not None and record["status"] == FINISHED:
                diffs = settings_difference(record.get("settings", {}), study.settings(norm, seed))
                if diffs and not study.retrain:
                    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
                    raise StudyError(
                        f"{study.run_dir(norm, seed)} was trained with other settings: "
                        f"{'; '.join(diffs[:3])}{more}. Give --retrain to train such runs again "
                        "with these settings, or a new --output"
                    )
                if diffs:
                    record = None
            out[(norm, seed)] = (
                record if record is not None and record["status"] == FINISHED else None
            )
    return out


# -- one run -----------------------------------------------------------------------------------


def _death_signal_setter() -> Optional[Callable[[], None]]:
    """A function for ``preexec_fn`` that makes the child die (SIGKILL) when the study dies, even
    by SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``); None where there is no prctl."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the study died before prctl took effect
            os._exit(1)

    return set_death_signal


def start_child(
    command: Sequence[str], log_file: str, lock_fd: int, env: Dict[str, str]
) -> subprocess.Popen:
    """Start ``command`` (its output into ``log_file``) in a session of its own that inherits the
    run's lock and dies with the study (``PR_SET_PDEATHSIG``)."""
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            pass_fds=(lock_fd,),
            preexec_fn=_death_signal_setter(),
        )
    _note_holder(lock_fd, f"study pid {os.getpid()}, training pid {proc.pid}")
    return proc


def _kill_group(proc: Any, grace_s: float = 5.0) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.time() + grace_s
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is not None:
            break
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers the trainer left behind


def _log_tail(log_file: str, lines: int = LOG_TAIL) -> List[str]:
    with contextlib.suppress(OSError):
        with open(log_file, errors="replace") as f:
            return f.read().splitlines()[-lines:]
    return []


def _gpu_peak_mib(log_file: str) -> Optional[float]:
    """The largest ``max_mem: <N>M`` that detectron2 printed (GPU runs only)."""
    with contextlib.suppress(OSError):
        with open(log_file, errors="replace") as f:
            peaks = [float(m) for m in re.findall(r"max_mem: (\d+)M", f.read())]
        return max(peaks) if peaks else None
    return None


def _clear(run_dir: str) -> None:
    """Empty an unfinished run's folder but its lock: metrics.json is appended to."""
    for name in os.listdir(run_dir):
        if name != LOCK_FILE:
            path = os.path.join(run_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


@dataclass
class _Running:
    """A training process of the study and what its record needs when it ends."""

    study: Study
    norm: str
    seed: int
    proc: subprocess.Popen
    record: Dict[str, Any]
    start: float

    @property
    def log_file(self) -> str:
        return os.path.join(self.study.run_dir(self.norm, self.seed), LOG_FILE)


def start_run(study: Study, norm: str, seed: int, lock_fd: int, env: Dict[str, str]) -> _Running:
    """Start the training process of (norm, seed) in its emptied folder."""
    run_dir = study.run_dir(norm, seed)
    _clear(run_dir)
    command = [*study.train_command, "--num-gpus", str(study.num_gpus)]
    if study.num_gpus > 1:
        command += ["--dist-url", "auto"]  # a free port: studies on one machine do not collide
    command += ["--config-file", study.config_file, *study.run_overrides(norm, seed)]
    command += ["OUTPUT_DIR", run_dir]
    record: Dict[str, Any] = {
        "norm": norm,
        "seed": seed,
        "run_dir": os.path.relpath(run_dir, study.output),
        "command": command[1:],
        "settings": study.settings(norm, seed),
    }
    start = time.time()
    proc = start_child(command, os.path.join(run_dir, LOG_FILE), lock_fd, env)
    return _Running(study, norm, seed, proc, record, start)


def finish_run(run: _Running, status: int, usage: Any) -> Dict[str, Any]:
    """The record of an ended run, also written to its folder's run.json: "finished" with its
    results, or "failed" with the reason and the last lines of its log."""
    record = run.record
    record["wall_s"] = time.time() - run.start
    run_dir = run.study.run_dir(run.norm, run.seed)
    try:
        if status != 0:
            raise AnalysisError(f"exit status {status}")
        metrics = os.path.join(run_dir, "metrics.json")
        max_iter = record["settings"]["config"]["SOLVER.MAX_ITER"]
        record.update(run_summary(read_metrics_json(metrics), max_iter, metrics))
        if not record["final"]:
            raise AnalysisError(f"no evaluation in {metrics}")
        if run.norm in SN_NORMS:
            final = os.path.join(run_dir, "model_final.pth")
            record["sn_shares"] = dict(load_shares(final).summary())
    except (InputError, OSError) as e:
        record.update(status=FAILED, error=str(e), log_tail=_log_tail(run.log_file))
    else:
        gpu = _gpu_peak_mib(run.log_file)
        # ru_maxrss (KiB on Linux): the largest of the run's processes, workers included
        record["peak_memory_mib"] = gpu if gpu is not None else usage.ru_maxrss / 1024
        record["peak_memory_kind"] = "CUDA max allocated" if gpu is not None else "max RSS"
        record["status"] = FINISHED
    with atomic_write(os.path.join(run_dir, RUN_RECORD), "w") as f:
        json.dump(record, f, indent=1)
    return record


def _wait_any(running: Dict[int, _Running]) -> Tuple[_Running, int, Any]:
    """The first of ``running`` (by pid) to end, removed from it, its exit status and usage."""
    while True:
        pid, status, usage = os.wait4(-1, 0)
        run = running.pop(pid, None)
        if run is not None:
            run.proc.returncode = os.waitstatus_to_exitcode(status)
            return run, run.proc.returncode, usage


def job_env(env: Dict[str, str], jobs: int) -> Dict[str, str]:
    """``env`` for one of ``jobs`` runs side by side: the cores shared out among them
    (``OMP_NUM_THREADS``, unless the user set it)."""
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        return {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    return env


# -- the study ---------------------------------------------------------------------------------


class _Stopped(Exception):
    """SIGTERM received: stop the current run and the study."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped(f"signal {signum}")


def write_results(study: Study, records: Sequence[Dict[str, Any]], command: str) -> List[str]:
    """results.md/.csv/.json, ap_curve.png and loss.png of ``records``, all or none."""
    rows = table_rows(records, study.norms, len(study.seeds))
    settings = {
        "command": command,
        "config_file": study.config_file,
        "overrides": study.overrides,
        "norms": study.norms,
        "seeds": study.seeds,
    }
    files = {
        "results.csv": results_csv(rows),
        "results.md": results_markdown(rows, records, study.config_file, study.num_gpus, command),
        "results.json": json.dumps(results_json(rows, records, settings), indent=1),
        **curves_pngs(records, study.norms, len(study.seeds)),
    }
    return write_files(study.output, files)


def run_study(study: Study, command: str, log: Callable[[str], None] = print) -> int:
    """Train the runs not finished yet, ``study.jobs`` at a time (seeds outer: a study stopped
    part-way has every norm for the first seeds), then write the results. Returns 0, or 1 if a
    run failed (the others still run, the table marks what is missing). Old results are removed
    before anything trains, so none is left as if current."""
    env = dict(os.environ)
    if study.datasets:
        env[DATASETS_ENV] = env_value(study.datasets)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with locked_runs(study) as locks:
            reuse = plan(study)
            for name in RESULT_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(study.output, name))
            done = _train_runs(study, reuse, locks, job_env(env, study.jobs), log)
            records = [done[(norm, seed)] for seed in study.seeds for norm in study.norms]
            write_results(study, records, command)
    except (KeyboardInterrupt, _Stopped):
        log("[norm_study] stopped; its training processes were stopped too")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [r for r in records if r["status"] == FAILED]
    log(f"[norm_study] wrote {os.path.join(study.output, 'results.md')} and the plots")
    if failed:
        log(
            f"[norm_study] {len(failed)} run(s) failed: "
            + ", ".join(f"{r['norm']} seed {r['seed']} ({r['error']})" for r in failed)
        )
        return 1
    return 0


def _train_runs(
    study: Study,
    reuse: Dict[Tuple[str, int], Optional[Dict[str, Any]]],
    locks: Dict[Tuple[str, int], int],
    env: Dict[str, str],
    log: Callable[[str], None],
) -> Dict[Tuple[str, int], Dict[str, Any]]:
    """Train the runs that ``reuse`` has no record for, ``study.jobs`` at a time, seeds outer;
    returns every run's record. Stopped (an exception, SIGTERM, Ctrl-C): the running trainings'
    process groups are killed before this returns."""
    order = [(norm, seed) for seed in study.seeds for norm in study.norms]
    done = {key: record for key, record in reuse.items() if record is not None}
    for k, (norm, seed) in enumerate(order, start=1):
        if (norm, seed) in done:
            log(f"[norm_study] {k}/{len(order)} {norm} seed {seed}: finished before, skipped")
    pending = [key for key in order if key not in done]
    running: Dict[int, _Running] = {}
    try:
        while pending or running:
            while pending and len(running) < study.jobs:
                norm, seed = pending.pop(0)
                k = order.index((norm, seed)) + 1
                log(f"[norm_study] {k}/{len(order)} {norm} seed {seed}: training ...")
                run = start_run(study, norm, seed, locks[(norm, seed)], env)
                running[run.proc.pid] = run
            run, status, usage = _wait_any(running)
            record = done[(run.norm, run.seed)] = finish_run(run, status, usage)
            log(f"[norm_study]   {run.norm} seed {run.seed}: {_summary(record)}")
    finally:
        for run in running.values():
            _kill_group(run.proc)
    return done


def _summary(record: Dict[str, Any]) -> str:
    if record["status"] == FAILED:
        return f"FAILED: {record['error']}; see {os.path.join(record['run_dir'], LOG_FILE)}"
    aps = ", ".join(f"{k} AP {v['AP']:.1f}" for k, v in record["final"].items())
    return f"{aps}, {record['time_per_iter']:.3f} s/iter"
