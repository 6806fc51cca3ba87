"""The pytest plugin as a user's own tests use it: the `kho` fixture and its marker."""

from __future__ import annotations

import pytest

from khofs.cli.pytest_plugin import Kho

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
