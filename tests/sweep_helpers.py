"""Shared by test_sweep.py and test_summarize.py: MNIST, one real local sweep, a real SLURM,
fabricated results folders and a fake pack.py that fabricates its members' folders.

The real sweep (2 seeds, no hidden layer, 1 epoch, evaluation once an epoch) takes about
a minute on two busy cores, so it runs once per test session, whichever file asks first.
"""
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from gaitprop.runs import run_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(REPO, os.pardir, "shared", "data", "MNIST", "raw")
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
TINY_RUN = ["--nb_layers", "0", "--nb_epochs", "1", "--eval_interval", "0", "--backend", "numpy"]
_cache = {}


def require(condition, message):
    """Fail when the environment variable CI is set, skip otherwise, unless `condition`."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def mnist_root(tmp_path_factory):
    """A writable data root `<root>/MNIST/raw/` with the genuine MNIST files, made once.

    The .gz files are copied and also unpacked here: runs started together on a fresh root
    would otherwise all unpack them at once (see the note in the sweep tests).
    """
    if "mnist" not in _cache:
        missing = [name for name in RAW_FILES
                   if not os.path.exists(os.path.join(SHARED_MNIST, name + ".gz"))]
        require(not missing, f"MNIST files missing in {SHARED_MNIST}: {', '.join(missing)}")
        root = tmp_path_factory.mktemp("data")
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in RAW_FILES:
            shutil.copyfile(os.path.join(SHARED_MNIST, name + ".gz"), raw / (name + ".gz"))
            with gzip.open(raw / (name + ".gz")) as packed, open(raw / name, "wb") as unpacked:
                shutil.copyfileobj(packed, unpacked)
        _cache["mnist"] = str(root)
    return _cache["mnist"]


def sweep_command(*arguments):
    """The command line of ./sweep.py with `arguments`."""
    return [sys.executable, os.path.join(REPO, "sweep.py")] + [str(a) for a in arguments]


def real_sweep(tmp_path_factory):
    """Run `sweep.py --seed 1-2 --jobs 2` of tiny MNIST runs once; (results dir, process)."""
    if "sweep" not in _cache:
        data = mnist_root(tmp_path_factory)
        results = tmp_path_factory.mktemp("real_sweep") / "results"
        process = subprocess.run(
            sweep_command("--seed", "1-2", "--jobs", "2", "--data_dir", data,
                          "--results_dir", results, *TINY_RUN),
            capture_output=True, text=True, timeout=600, cwd=REPO)
        _cache["sweep"] = (str(results), process)
    return _cache["sweep"]


def run_folders(results):
    """The results folders (those with a run.json) directly in `results`, sorted."""
    return sorted(os.path.join(results, name) for name in os.listdir(results)
                  if os.path.exists(os.path.join(results, name, "run.json")))


def record(folder):
    """A results folder's run.json."""
    with open(os.path.join(folder, "run.json")) as file:
        return json.load(file)


def fabricate(settings, status, epochs_done=1, with_checkpoint=False, **stored_changes):
    """A results folder whose run.json (and checkpoint.npz marker) say `status`."""
    folder = run_folder.results_folder(settings)
    os.makedirs(folder)
    stored = {**vars(settings), **stored_changes}
    with open(os.path.join(folder, "run.json"), "w") as file:
        json.dump({"settings": stored, "status": status, "epochs_done": epochs_done,
                   "nb_epochs": settings.nb_epochs, "message": "Training diverged"}, file)
    if with_checkpoint:
        with open(os.path.join(folder, "checkpoint.npz"), "wb") as file:
            file.write(b"a marker, not a checkpoint")
    return folder


FAKE_PACK = """import json, os, sys
sys.path[:0] = [{repo!r}, {tests!r}]
from gaitprop.cli import pack
from sweep_helpers import fabricate
statuses = json.loads(os.environ.get("FAKE_PACK_STATUSES", "{{}}"))
print("fake pack.py", sys.argv[1:])
for settings, _ in pack.parse_members(pack.build_parser().parse_args(sys.argv[1:]).member):
    status = statuses.get(str(settings.seed))
    if status:
        fabricate(settings, status, with_checkpoint=status != "running")
sys.exit(int(os.environ.get("FAKE_PACK_EXIT", "0")))
"""


def fake_pack(folder):
    """A stand-in for pack.py in `folder` (returns its path): it parses its members as pack.py
    does, fabricates the folder of each member whose seed $FAKE_PACK_STATUSES (JSON) maps to a
    status, with a checkpoint unless that is 'running', and exits with $FAKE_PACK_EXIT."""
    path = os.path.join(folder, "pack.py")
    with open(path, "w") as file:
        file.write(FAKE_PACK.format(repo=REPO, tests=os.path.dirname(os.path.abspath(__file__))))
    return path


def free_ports(count):
    """`count` TCP ports nothing listens on now."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def wait_for(condition, timeout, what):
    """Poll `condition()` every half second until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


SLURM_CONF = """ClusterName=sweeptest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
NodeName={host} CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start_slurm(folder):
    """Start a one-node SLURM of the test's own in `folder`; yield its environment, then stop it.

    The usual one-machine SLURM (munged, slurmctld and slurmd, with a slurm.conf of its own
    ports), except that munged gets its own key and socket in `folder`
    (AuthInfo=socket=...), so nothing of the machine's is touched. The daemons are stopped
    by their process ids, after any job left in this SLURM is cancelled.
    """
    programs = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
    missing = [name for name in programs if shutil.which(name) is None]
    require(not missing, f"SLURM programs missing: {', '.join(missing)} (apt-get install "
                         f"slurm-wlm munge)")
    require(os.geteuid() == 0, "the test SLURM runs its daemons as root (SlurmUser=root)")
    for name in ("state", "spool"):
        (folder / name).mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    (folder / "slurm.conf").write_text(SLURM_CONF.format(
        host=socket.gethostname().split(".")[0], folder=folder, ports=free_ports(2)))
    environment = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    daemons = []

    def start(name, *command):
        log = open(folder / f"{name}.out", "w")
        daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env=environment))
        log.close()

    def node_state():
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                env=environment)
        return result.stdout.strip()
    try:
        start("munged", "munged", "--foreground", "--force", f"--socket={folder}/munge.socket",
              f"--key-file={key}", f"--pid-file={folder}/munged.pid",
              f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed")
        wait_for(lambda: os.path.exists(folder / "munge.socket"), 30, "munged")
        start("slurmctld", "slurmctld", "-D", "-c")
        start("slurmd", "slurmd", "-D")
        wait_for(lambda: node_state() == "idle", 60, f"the node to be idle ({folder})")
        yield environment
    finally:
        if daemons[1:]:
            subprocess.run(["scancel", "--user", "root"], env=environment, timeout=30)
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
