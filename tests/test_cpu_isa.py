"""The CPU kernels' run-time ISA choice (common/cpu_isa.h): one binary for every x86-64 CPU.

Every CPU kernel file is compiled once per ISA (portable, AVX2+FMA, AVX-512) into its own
namespace, and the copy the CPU runs is chosen when the library loads (``FASTDL_CPU_ISA`` forces
a lower one). Checked here:

- the default choice is the widest ISA this CPU has, and build_info() reports it;
- each forced ISA gives torch's results for every op family, in a fresh interpreter
  (tests/isa_workload.py), and the path tests (the shapes around every vector threshold, whose
  widths depend on the ISA) pass under the forced lower ISAs;
- the binary (its disassembly, objdump): no instruction wider than the ISA a function may run
  at, its copy's, or for code outside the copies the lowest ISA of its callers (so the
  baseline for anything the portable path can reach);
- the library run on emulated CPUs without AVX-512 (Haswell) and without AVX at all (Nehalem),
  under qemu's user-mode emulator, where any wider instruction is SIGILL: it loads, picks
  avx2 and portable, runs every op, and on Haswell gives torch's results (to 1e-2: qemu's
  floating point is not always the hardware's, see EMULATED).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import fastdl

FAMILY = "build"

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "isa_workload.py")
ORDER = ["portable", "avx2", "avx512", "avx512_bf16", "amx"]


def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ("" if absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def _widest_isa(flags: set[str]) -> str:
    avx2 = {"avx2", "fma", "f16c"} <= flags
    if avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        # the bfloat16 units: AMX where the CPU (and Linux: /proc/cpuinfo lists amx_tile only
        # when the kernel supports it) has them; AVX512_BF16 by itself on AMD's CPUs only
        if "avx512_bf16" in flags:
            if {"amx_tile", "amx_bf16"} <= flags:
                return "amx"
            if _cpuinfo("vendor_id") == "AuthenticAMD":
                return "avx512_bf16"
        return "avx512"
    return "avx2" if avx2 else "portable"


WIDEST = _widest_isa(_cpu_flags())


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FASTDL_CPU_ISA"}
    env.update(extra)
    return env


def _run(cmd, env, timeout=600):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif("FASTDL_CPU_ISA" in os.environ, reason="FASTDL_CPU_ISA forces the choice")
def test_default_is_the_widest_isa_this_cpu_runs():
    info = fastdl.build_info()
    assert info["cpu_isa"] == WIDEST, (info, WIDEST)


@pytest.mark.parametrize("isa", ORDER)
def test_forced_isa_gives_torchs_results(isa):
    if ORDER.index(isa) > ORDER.index(WIDEST):
        pytest.skip(f"this CPU runs only up to {WIDEST}")
    done = _run([sys.executable, WORKLOAD], _env(FASTDL_CPU_ISA=isa))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    words = done.stdout.split()
    assert words[:2] == ["ok", isa], done.stdout
    assert int(words[2]) > 100  # every family, both dtypes, outputs and gradients


@pytest.mark.parametrize("value", ["sse9", "AVX512 "])
def test_unknown_isa_warns_and_keeps_the_widest(value):
    code = "import fastdl; print(fastdl.build_info()['cpu_isa'])"
    done = _run([sys.executable, "-c", code], _env(FASTDL_CPU_ISA=value), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [WIDEST]
    assert "is not one of portable, avx2, avx512, avx512_bf16, amx" in done.stderr


@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_path_tests_pass_under_a_forced_lower_isa(isa):
    """The path tests take their thresholds from the ISA in use (tests/thresholds.py), so under
    a forced ISA they cover that copy's vector widths and unrolls. Float32 (the type whose
    widths differ most between copies), every family."""
    if ORDER.index(isa) >= ORDER.index(WIDEST):
        pytest.skip(f"{isa} is not below this CPU's widest ISA ({WIDEST})")
    paths = sorted(os.path.join(HERE, f) for f in os.listdir(HERE) if f.startswith("test_paths_"))
    done = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            *paths,
            "-k",
            "float32 and not kernel_choice",
        ],
        _env(FASTDL_CPU_ISA=isa, FASTDL_TEST_THREADS="1,2"),
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"\b\d+ passed", done.stdout), done.stdout[-2000:]


# --- the binary ----------------------------------------------------------------------------


def _libfastdl() -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if os.path.basename(path) == "libfastdl.so":
                return path
    pytest.fail("libfastdl.so is not loaded")


# AT&T mnemonics of AVX (VEX) and AVX-512 (EVEX) instructions all start with "v"; the few
# other "v" instructions are VMX's (never in user code) and verr/verw.
_NOT_AVX = re.compile(
    r"^(verr|verw|vm(call|launch|resume|read|write|xon|xoff|ptrld|ptrst|clear|func))$"
)
_BMI = {
    "andn",
    "bextr",
    "blsi",
    "blsmsk",
    "blsr",
    "bzhi",
    "lzcnt",
    "mulx",
    "pdep",
    "pext",
    "rorx",
    "sarx",
    "shlx",
    "shrx",
    "movbe",
}
_AVX512_REGISTER = re.compile(r"%zmm\d+|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b")
_TARGET = re.compile(r"^([0-9a-f]+) <([^>+]*)")
_CLONE = re.compile(r"\.(isra|constprop|part)\.\d+")
# Levels: 0 the baseline, 1 AVX2 (with FMA, F16C), 2 AVX-512, 3 its bfloat16 units (AVX512_BF16
# and AMX: the instructions of common/cpu/gemm_bf16.cpp).
_ISA_LEVEL = {"portable": 0, "avx2": 1, "avx512": 2, "bf16_units": 3}
_BF16_UNITS = re.compile(
    r"^(vdpbf16ps|vcvtne2ps2bf16|vcvtneps2bf16|ldtilecfg|sttilecfg|tilerelease"
    r"|tilezero|tileloadd|tileloaddt1|tilestored|tdp\w+)$"
)


def _instruction_level(mnemonic: str, operands: str) -> int:
    if _BF16_UNITS.match(mnemonic):
        return 3
    if _AVX512_REGISTER.search(operands):
        return 2
    if (
        (mnemonic.startswith("v") and not _NOT_AVX.match(mnemonic))
        or mnemonic in _BMI
        or "%ymm" in operands
    ):
        return 1
    return 0


def _copy_level(mangled: str):
    """The ISA level of the kernel copy a function belongs to (its name, or a template argument
    of it, is in namespace AVX2 or AVX512: "4AVX2", "6AVX512" in the mangled name; the AVX-512
    copy's namespace bf16_units, which runs only with a bfloat16-unit ISA selected, is level 3),
    or None."""
    if "6AVX512" in mangled:
        return 3 if "10bf16_units" in mangled else 2
    if "4AVX2" in mangled:
        return 1
    return None


def _functions(lib: str):
    """{start address: (mangled name, highest instruction level, {addresses jumped or called},
    {names called through the PLT})} for every function of lib's .text. A call of an exported
    function (such as an inline function of torch's headers) goes through its PLT stub."""
    objdump = shutil.which("objdump")
    if not objdump:
        pytest.skip("objdump (binutils) is not installed")
    proc = subprocess.Popen(
        [objdump, "-d", "--no-show-raw-insn", "-j", ".text", lib],
        stdout=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    header = re.compile(r"^([0-9a-f]+) <(.*)>:$")
    functions, current = {}, None
    for line in proc.stdout:
        m = header.match(line)
        if m:
            current = [m.group(2), 0, set(), set()]
            functions[int(m.group(1), 16)] = current
            continue
        parts = line.rstrip("\n").split("\t")
        if current is None or len(parts) < 2 or not parts[0].strip().endswith(":"):
            continue
        fields = parts[1].split(None, 1)
        if not fields:
            continue
        mnemonic, operands = fields[0], fields[1] if len(fields) > 1 else ""
        current[1] = max(current[1], _instruction_level(mnemonic, operands))
        t = _TARGET.match(operands)
        if t and (mnemonic.startswith("j") or mnemonic.startswith("call")):
            if t.group(2).endswith("@plt"):
                current[3].add(t.group(2)[: -len("@plt")])
            else:
                current[2].add(int(t.group(1), 16))
    assert proc.wait() == 0
    return functions


def test_no_wider_instruction_reachable_outside_its_copy():
    """Every function of libfastdl gets the ISA level it may run at: a function of a kernel
    copy (named in namespace AVX2/AVX512) its copy's; any other the lowest level of the
    functions that call or jump to it directly, and the baseline if none does (an entry point,
    a static initializer, a function called through a pointer). No function may hold an
    instruction above its level. The functions of a wider copy's files outside its namespace
    (inline functions of shared headers, their compiler clones) pass only when called from that
    copy alone; the link order (baseline first) makes the shared ones the baseline builds."""
    import bisect

    functions = _functions(_libfastdl())
    starts = sorted(functions)
    by_name = {}
    for a, (name, _, _, _) in functions.items():
        by_name.setdefault(name, []).append(a)
    callers = {a: set() for a in starts}
    for a, (_, _, targets, plt_targets) in functions.items():
        for t in targets:
            i = bisect.bisect_right(starts, t) - 1
            if i >= 0 and starts[i] != a:
                callers[starts[i]].add(a)
        for name in plt_targets:
            for callee in by_name.get(name, ()):
                callers[callee].add(a)
    level = {}
    for a, (name, _, _, _) in functions.items():
        copy = _copy_level(name)
        if copy is not None:
            level[a] = copy
        elif callers[a]:
            level[a] = 2  # lowered to its callers' level below
        else:
            # No direct caller: the baseline, except a compiler clone (gcc's .isra/.constprop/
            # .part specialisations, made for direct calls only, never address-taken): with
            # no caller left it is dead code, the clone of a function whose callers were
            # inline functions the linker dropped for their baseline build.
            level[a] = 2 if _CLONE.search(name) else 0
    changed = True
    while changed:  # lower each free function to its callers' lowest level
        changed = False
        for a, (name, _, _, _) in functions.items():
            if _copy_level(name) is None and callers[a]:
                low = min(level[c] for c in callers[a])
                if low < level[a]:
                    level[a], changed = low, True
    leaks = [
        (functions[a][0], functions[a][1], level[a]) for a in starts if functions[a][1] > level[a]
    ]
    if leaks:
        names = subprocess.run(
            ["c++filt"], input="\n".join(n for n, _, _ in leaks), text=True, capture_output=True
        ).stdout.split("\n")
        pytest.fail(
            f"{len(leaks)} functions hold instructions above the ISA they may run at:\n"
            + "\n".join(
                f"  {n[:200]}: level {i} instructions, runs at level {lv}"
                for n, (_, i, lv) in zip(names, leaks[:30])
            )
        )
    # The copies are there, with their instructions (their compile flags reached them).
    compiled = fastdl.build_info()["cpu_isas"]
    if "amx" in compiled:
        compiled = [*compiled, "bf16_units"]
    for isa in ("avx2", "avx512", "bf16_units"):
        if isa in compiled:
            n = sum(
                1
                for name, insn, _, _ in functions.values()
                if _copy_level(name) == _ISA_LEVEL[isa] and insn == _ISA_LEVEL[isa]
            )
            least = 4 if isa == "bf16_units" else 50  # the packers and the micro-kernels
            assert n >= least, f"only {n} functions of the {isa} copy use its instructions"


# --- emulated CPUs -------------------------------------------------------------------------

QEMU = shutil.which("qemu-x86_64")
# Emulated CPU model -> the ISA the library must choose there, and whether its results are
# compared with torch's. Under qemu 7.2's Nehalem model a few elements (one in ~10,000: a
# float64 conv2d input gradient, a float32 layer_norm one) come out up to 1e-2 away from the
# native run of the same portable code, which matches torch to 1e-9 there, and torch's own
# float64 matrix products differ by 5e-8: that model's arithmetic is not the hardware's, so
# there the run proves only that every op runs without an instruction the CPU lacks; the
# portable copy's results are checked natively (FASTDL_CPU_ISA=portable).
EMULATED = {"Haswell": ("avx2", True), "Nehalem": ("portable", False)}


def _canary_traps(model: str, instruction: str) -> bool:
    """Whether qemu's `model` raises SIGILL on `instruction` (so a wider instruction in the
    library could not go unnoticed)."""
    src = textwrap.dedent(f"""
        int main(void) {{ __asm__ volatile("{instruction}"); return 0; }}
    """)
    exe = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fastdl_isa_canary_{model}_{os.getpid()}")
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler for the canary")
    subprocess.run([cc, "-x", "c", "-o", exe, "-"], input=src, text=True, check=True)
    try:
        done = subprocess.run([QEMU, "-cpu", model, exe], capture_output=True, timeout=60)
        return done.returncode != 0
    finally:
        os.unlink(exe)


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-user (qemu-x86_64) is not installed")
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 only")
def test_runs_on_cpus_without_avx512_and_without_avx(tmp_path):
    """Under qemu (user mode: the same interpreter, torch and fastdl, instruction by instruction
    on an emulated CPU model), the library loads, chooses the ISA the model has and gives
    torch's results, computed beforehand on this CPU (torch's oneDNN RNN kernels, compiled at
    run time, crash under qemu), to 1e-2 on Haswell; on Nehalem every op runs (see EMULATED).
    Both models run at once (each takes minutes)."""
    assert _canary_traps("Haswell", "vpxord %zmm0, %zmm0, %zmm0")
    assert _canary_traps("Nehalem", "vaddps %xmm0, %xmm0, %xmm0")
    expected = str(tmp_path / "torch_results.pt")
    saved = _run([sys.executable, WORKLOAD, "--save-torch", expected], _env())
    assert saved.returncode == 0 and saved.stdout.startswith("saved"), saved.stderr[-3000:]
    runs = {
        model: subprocess.Popen(
            [
                QEMU,
                "-cpu",
                model,
                sys.executable,
                WORKLOAD,
                *(["--torch-from", expected] if compare else ["--run-only"]),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for model, (_, compare) in EMULATED.items()
    }
    for model, proc in runs.items():
        out, err = proc.communicate(timeout=1800)
        assert proc.returncode == 0, (
            f"{model}: exit {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
        )
        assert out.split()[:2] == ["ok", EMULATED[model][0]], (model, out)
        assert int(out.split()[2]) > 100, (model, out)
