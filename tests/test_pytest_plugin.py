"""The pytest plugin as a user's own tests use it: the `kho` fixture and its marker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from khofs.cli.pytest_plugin import Kho
from tests.helpers import is_mounted

pytestmark = pytest.mark.mount

DTS = '/dts-v1/;\n/ {\n\tcompatible = "mydrv-v1";\n};\n'


@pytest.mark.kho(machine="server-2s", cmdline="kho=on reserve_mem=4M:2M:trace")
def test_marker_boots_the_machine_asked_for(kho: Kho) -> None:
    assert kho.read("kho/out/scratch_len").count(b"\n") == 4  # two nodes
    assert kho.machine == "server-2s"


def test_producers_finalize_and_kexec(kho: Kho) -> None:
    kho.add_producer("mydrv", dts=DTS, preserve=["0x100000000+2M"])
    kho.finalize()
    out_sub = kho.read("kho/out/sub_fdts/mydrv")
    kho.kexec()
    assert kho.read("kho/in/sub_fdts/mydrv") == out_sub
    assert kho.read("kho/out/finalize") == b"0\n"
    assert any("[boot 2]" in line and "KHO: found kexec handover data" in line
               for line in kho.log())
    with pytest.raises(RuntimeError):
        kho.add_producer("late", dts=DTS)


def test_errnos_come_back_as_oserror(kho: Kho) -> None:
    with pytest.raises(OSError) as e:
        kho.abort()
    assert e.value.errno == 2  # ENOENT: not finalized


# --- one mount per session, a fresh kernel per test: a nested pytest session -----------------

SESSION = '''
import json
import os
import signal
from pathlib import Path

import pytest

from khofs.cli.pytest_plugin import KhofsError
from khofs.daemon.state import pid_path

FACTS = Path(os.environ["FACTS"])
COUNT = os.environ["COUNT_PLUGIN"]
DTS = '/dts-v1/;\\n/ {{\\n\\tcompatible = "mydrv-v1";\\n}};\\n'
OLD_FDS = []


def record(kho, **facts):
    facts["dev"] = os.stat(kho.root).st_dev  # first use: the kernel boots
    facts["mountpoint"] = str(kho.mountpoint)
    facts["first"] = kho.first_boot
    facts["daemon"] = int(pid_path(str(kho.root)).read_text())
    with FACTS.open("a") as f:
        f.write(json.dumps(facts) + "\\n")


def texts(lines):
    return [line.split("] ", 2)[0] + "] " + line.split("] ", 2)[2] for line in lines]


@pytest.mark.kho(cmdline="kho=on reserve_mem=4M:2M:trace", plugins=[COUNT])
def test_1_changes_everything(kho):
    kho.add_producer("mydrv", dts=DTS)
    kho.finalize()
    kho.kexec()
    assert sorted(os.listdir(kho.root / "kho/in/sub_fdts")) == ["memblock", "mydrv"]
    kho.finalize()
    OLD_FDS.append(os.open(kho.root / "kho/out/finalize", os.O_RDONLY))
    assert texts(kho.log())[0] == "[boot 1] Kernel command line: kho=on reserve_mem=4M:2M:trace"
    assert "[boot 2] count: api.boot 2, boots this module saw: 2" in texts(kho.log())
    record(kho)


@pytest.mark.kho(plugins=[COUNT])
def test_2_sees_none_of_it(kho):
    assert kho.read("kho/out/finalize") == b"0\\n"
    assert os.listdir(kho.root / "kho") == ["out"]  # no kho/in
    assert not (kho.root / "kho/out/fdt").exists()
    with pytest.raises(OSError) as e:  # the last test's open file
        os.read(OLD_FDS[0], 64)
    assert e.value.errno == 5
    kho.finalize()
    assert os.listdir(kho.root / "kho/out/sub_fdts") == []  # no producers, no reserve_mem
    # its own kernel only, numbered from 1; the plugin module ran anew
    assert texts(kho.log()) == ["[boot 1] Kernel command line: kho=on",
                                "[boot 1] count: api.boot 1, boots this module saw: 1"]
    record(kho)


@pytest.mark.kho(machine="server-2s")
def test_3_another_machine(kho):
    assert kho.read("kho/out/scratch_len").count(b"\\n") == 4
    assert texts(kho.log()) == ["[boot 1] Kernel command line: kho=on"]
    record(kho)


def test_4_kills_the_daemon(kho):
    record(kho)
    os.kill(int(pid_path(str(kho.root)).read_text()), signal.SIGKILL)


def test_5_after_a_dead_daemon(kho):
    assert kho.read("kho/out/finalize") == b"0\\n"
    assert texts(kho.log()) == ["[boot 1] Kernel command line: kho=on"]
    record(kho)


def test_6_kexecs_away(kho, tmp_path):
    kho.kexec("--to", str(tmp_path / "next"))
    assert (tmp_path / "next" / "handover.json").exists()


@pytest.mark.kho(producers=[{{"name": "bad", "dts": "/nonexistent/bad.dts"}}])
def test_7_bad_options(kho):
    with pytest.raises(KhofsError) as e:
        kho.root
    assert "bad.dts" in str(e.value) and str(e.value).startswith("khofs: ")


def test_8_after_all_that(kho):
    assert kho.read("kho/out/finalize") == b"0\\n"
    assert texts(kho.log()) == ["[boot 1] Kernel command line: kho=on"]
    record(kho)
'''

COUNT_PLUGIN = """
BOOTS = []


def count(api):
    BOOTS.append(api.boot)
    api.log(f"count: api.boot {api.boot}, boots this module saw: {len(BOOTS)}")
"""


def test_a_session_reboots_one_mount_per_test(tmp_path: Path) -> None:
    """Each test gets a fresh kernel on the session's one mount: nothing a test did (its
    producers, plugins' module state, finalize, kho/in, open files, the log, the machine) is
    visible to the next; a test that ends the daemon costs the next one a new mount."""
    (tmp_path / "count.py").write_text(COUNT_PLUGIN)
    (tmp_path / "test_session.py").write_text(SESSION.format())
    facts = tmp_path / "facts.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update(FACTS=str(facts), COUNT_PLUGIN=f"{tmp_path}/count.py:count")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--basetemp={tmp_path / 'base'}", str(tmp_path / "test_session.py")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 passed" in r.stdout
    seen = [json.loads(line) for line in facts.read_text().splitlines()]
    assert len(seen) == 6
    first, _, _, killed, after_kill, after_away = seen
    # tests 1-4 on one mount, rebooted: test 1 mounted (boot 1), test 2 after its two boots;
    # after the kill and after the kexec away, a new mount (its log starts at boot 1)
    assert [s["first"] for s in seen] == [1, 3, 4, 5, 1, 1]
    assert len({(s["dev"], s["daemon"]) for s in seen[:4]}) == 1
    assert len({killed["daemon"], after_kill["daemon"], after_away["daemon"]}) == 3
    assert len({s["mountpoint"] for s in seen}) == 1 and first["mountpoint"].endswith("/debugfs")
    assert not is_mounted(first["mountpoint"])  # unmounted when the session ended
    assert not Path(first["mountpoint"]).parent.exists()
