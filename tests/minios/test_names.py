"""Bare program names, and the words the layer looks at in Mini-OS's argv."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stubdom.host.hypervisor import HypervisorError
from stubdom.stubdomain.args import build_argv, loadvm_argument
from stubdom.toolstack.spawn import stubdom_kernel

BIN = Path(sys.executable).parent


def test_a_bare_stubdomain_kernel_is_found_beside_the_interpreter() -> None:
    assert stubdom_kernel("stubdom-minios") == str(BIN / "stubdom-minios")
    assert stubdom_kernel(None) == str(BIN / "stubdom-dm")
    assert stubdom_kernel("/opt/my/kernel") == "/opt/my/kernel"  # a path is the host's


def test_a_bare_name_that_is_no_program_is_one_line_naming_it_and_the_fix() -> None:
    with pytest.raises(HypervisorError) as e:
        stubdom_kernel("no-such-stub-kernel")
    assert str(e.value) == (
        "stubdomain_kernel 'no-such-stub-kernel' is not a program on PATH; "
        "give its path or install it")


def test_the_application_argv_is_the_command_line_then_the_dmargs_words() -> None:
    argv = build_argv(["prog", "--x"], " -d 5 -loadvm '/var/lib/xen/qemu-resume.5' -vcpus 2")
    assert argv == ["prog", "--x", "-d", "5", "-loadvm", "/var/lib/xen/qemu-resume.5",
                    "-vcpus", "2"]
    assert loadvm_argument(argv[1:]) == "/var/lib/xen/qemu-resume.5"
    assert loadvm_argument(["--loadvm", "f"]) == "f"
    assert loadvm_argument(["-d", "5", "-loadvm"]) is None  # no argument: qemu refuses it
