"""The thread's alternate signal stack kept across OpenVINO calls (inference/signal_stack.py)."""
import ctypes
import subprocess
import sys
import textwrap

import pytest

from panoptic_node.inference.signal_stack import SS_DISABLE, _libc, _Stack, current, kept_signal_stack

pytestmark = pytest.mark.skipif(_libc() is None, reason="sigaltstack is read through Linux's libc")


def test_a_stack_installed_inside_the_block_is_taken_back_out():
    before = current()
    buffer = ctypes.create_string_buffer(64 * 1024)
    with kept_signal_stack():  # what OpenVINO's CPU plugin does on the thread that compiles a graph
        installed = _Stack(ctypes.cast(buffer, ctypes.c_void_p), 0, len(buffer))
        assert _libc().sigaltstack(ctypes.byref(installed), None) == 0
        assert current() == (ctypes.addressof(buffer), len(buffer), False)
    assert current() == before
    # a thread that had one (pytest's faulthandler gives the main thread its own) gets that one back
    with kept_signal_stack():
        assert _libc().sigaltstack(ctypes.byref(_Stack(None, SS_DISABLE, 0)), None) == 0
    assert current() == before


@pytest.mark.skipif(not __import__("importlib").util.find_spec("openvino"), reason="openvino is not installed")
def test_a_handled_signal_after_openvino_ran_a_graph_reaches_its_handler(tmp_path):
    """After `infer --backend openvino` ran the test model, a SIGTERM (or Ctrl-C) with a Python handler ended
    the process with SIGSEGV inside kill(): the plugin had left an alternate signal stack whose memory was gone.
    In a process of its own, so a crash cannot take pytest with it."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        import numpy as np
        from PIL import Image
        from launch_helpers import tiny_model_yaml
        from panoptic_node.cli import main
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save({str(tmp_path / 'small.png')!r})
        assert main(["infer", {str(tmp_path / 'small.png')!r}, "--model", tiny_model_yaml(), "--out",
                     {str(tmp_path / 'out')!r}, "--backend", "openvino"]) == 0
        handled = []
        signal.signal(signal.SIGTERM, lambda *_: handled.append(1))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        print("handled" if handled else "not handled")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip().splitlines()[-1] == "handled"
