"""The adversarial suite: one submission per way a student tried to forge a grade, graded for real.

Each attack is exercise 01's released notebook with a few cells a student could write: a fake
answer (zeros of the right shape, which fail every hidden case) dressed up with the attack. Every
attack must score 0 for what it faked, the honest submissions must score exactly what the same
check gives in-process with the same sealed seed, no other submission's file may change, the CSV
on disk must still say what the grader reported after the attack's detached helpers had time to
act, and nothing the grader started may still be running.

All of it is one real grading run (bubblewrap sandboxes, no mocks), shared by the tests below.
"""
import csv
import hashlib
import json
import os
import time
from pathlib import Path

import nbformat
import pytest

from tinymoe.grading import exercise
from tinymoe.grading.grade import grade_folder
from tinymoe.grading.sandbox import bwrap_path

pytestmark = [pytest.mark.exercises, pytest.mark.slow,
              pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not installed; "
                                 "`apt-get install bubblewrap` (.ci/run does)")]

ROOT = Path(__file__).resolve().parents[1]
MARKER = f"tinymoe-attack-{os.getpid()}-{int(time.time())}"
CELL_TIMEOUT, TIMEOUT = 5, 40

SOFTMAX = '''def safe_softmax(x):
    shifted = x - x.amax(dim=-1, keepdim=True)
    e = shifted.exp()
    return e / e.sum(dim=-1, keepdim=True)'''
ATTENTION = '''def attention(q, k, v, causal=True):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return safe_softmax(scores) @ v'''
NAIVE_SOFTMAX = '''def safe_softmax(x):
    e = x.exp()
    return e / e.sum(dim=-1, keepdim=True)'''
NO_SCALE_ATTENTION = ATTENTION.replace(" / math.sqrt(q.shape[-1])", "")
FAKE_SOFTMAX = "def safe_softmax(x):\n    return torch.zeros_like(x)"
FAKE_ATTENTION = "def attention(q, k, v, causal=True):\n    return torch.zeros(*q.shape[:-1], v.shape[-1])"
FAKES = {"safe_softmax": FAKE_SOFTMAX, "attention": FAKE_ATTENTION}


def _attacks(paths: dict) -> dict:
    """name -> (cells added after the imports, answers by function, expected (softmax, attention), reason words)."""
    other = paths["honest_correct"]
    solution_files = [str(ROOT / "exercises" / "source" / "01_attention_by_hand.py"),
                      str(ROOT / "exercises" / "source" / "01_attention_by_hand.ipynb")]
    return {
        "honest_correct": ([], {"safe_softmax": SOFTMAX, "attention": ATTENTION}, "in-process", []),
        "honest_wrong": ([], {"safe_softmax": NAIVE_SOFTMAX, "attention": NO_SCALE_ATTENTION}, "in-process", []),
        "allclose_always_true": (["torch.allclose = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True\n"
                                  "torch.isclose = lambda a, b, *r, **k: torch.ones_like(a, dtype=torch.bool)"],
                                 FAKES, (0, 0), []),
        "tensor_subclass_says_equal": (['''class Always(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("allclose", "equal", "__eq__", "eq", "isclose", "__ne__"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})'''],
                                       {"safe_softmax": "def safe_softmax(x):\n    return torch.zeros_like(x).as_subclass(Always)",
                                        "attention": FAKE_ATTENTION + ".as_subclass(Always)"}, (0, 0), []),
        "open_rewrites_results": (['''import builtins
_open = builtins.open
def _forging_open(file, mode="r", *args, **kwargs):
    f = _open(file, mode, *args, **kwargs)
    if any(m in mode for m in "wa"):
        write = f.write
        f.write = lambda s: write(s.replace('"incorrect"', '"correct"').replace('"not_attempted"', '"correct"'))
    return f
builtins.open = _forging_open'''], FAKES, (0, 0), []),
        "import_hook_repatches_checks": (['''import builtins, sys
import tinymoe.grading.checks as _checks
import tinymoe.grading.feedback as _feedback
def _forged(self, *args, **kwargs):
    return _feedback.Result(self.name, _feedback.CORRECT, "correct", points=100, fraction=1.0, passed=99)
def _patch():
    for name in [m for m in sys.modules if m.startswith("tinymoe.grading")]:
        module = sys.modules[name]
        if hasattr(module, "Question"):
            module.Question.result = module.Question.evaluate = _forged
        if hasattr(module, "close"):
            module.close = lambda *a, **k: True
_import = builtins.__import__
def _hooked_import(name, *args, **kwargs):
    module = _import(name, *args, **kwargs)
    _patch()
    return module
builtins.__import__ = _hooked_import
_patch()'''], FAKES, (0, 0), []),
        "pre_run_cell_forges_result": (['''def _forge(*args):
    print("safe_softmax: correct 100/100\\nattention: correct 100/100")
    with open("results.jsonl", "a") as f:
        f.write('{"question": "safe_softmax", "status": "correct", "points": 100}\\n')
get_ipython().events.register("pre_run_cell", _forge)
get_ipython().events.register("post_run_cell", _forge)'''], FAKES, (0, 0), []),
        "walks_stack_for_expected": (['''import inspect
def _steal():
    for info in inspect.stack():
        for name, value in info.frame.f_locals.items():
            if name == "expected" and isinstance(value, torch.Tensor):
                return value
            if hasattr(value, "expected") and isinstance(getattr(value, "expected"), torch.Tensor):
                return value.expected
    return None'''],
                                     {"safe_softmax": "def safe_softmax(x):\n    found = _steal()\n"
                                                      "    return found if found is not None else torch.zeros_like(x)",
                                      "attention": "def attention(q, k, v, causal=True):\n    found = _steal()\n"
                                                   "    return found if found is not None else "
                                                   "torch.zeros(*q.shape[:-1], v.shape[-1])"}, (0, 0), []),
        "solutions_switched_on": ([FAKE_SOFTMAX, FAKE_ATTENTION, '''import os
os.environ["TINYMOE_SOLUTIONS"] = "1"
for _name in ("safe_softmax", "attention"):
    _note = getattr(ex, _name).solution()
    try:
        exec(_note.body, globals())
    except Exception:
        pass'''], {}, (0, 0), []),
        "reads_solution_files": ([FAKE_SOFTMAX, FAKE_ATTENTION, f'''import pathlib, re
import tinymoe
_places = [pathlib.Path(tinymoe.__file__).resolve().parents[1] / "exercises" / "source" / "01_attention_by_hand.py",
           *map(pathlib.Path, {solution_files!r})]
for _place in _places:
    try:
        _text = _place.read_text()
    except OSError:
        continue
    for _block in re.findall(r"(def \\w+\\(.*?)### END SOLUTION", _text, re.S):
        try:
            exec(_block.replace("### BEGIN SOLUTION", ""), globals())
        except Exception:
            pass'''], {}, (0, 0), []),
        "reads_other_students_via_proc": ([FAKE_SOFTMAX, FAKE_ATTENTION, f'''import glob, json, os
_found = []
for _cwd in glob.glob("/proc/*/cwd") + glob.glob("/proc/*/root/tmp/*"):
    try:
        for _f in os.listdir(_cwd):
            if _f.endswith(".ipynb"):
                _found.append(os.path.join(_cwd, _f))
    except OSError:
        pass
_found.append({str(other)!r})
for _path in _found:
    try:
        _cells = json.load(open(_path))["cells"]
    except Exception:
        continue
    for _cell in _cells:
        _source = "".join(_cell["source"])
        if _cell["cell_type"] == "code" and _source.startswith("def "):
            try:
                exec(_source, globals())
            except Exception:
                pass'''], {}, (0, 0), []),
        "detached_process_rewrites_csv": ([f'''import subprocess, sys
_script = """
import os, sys, time
target = {str(paths["out"] / "gradebook.csv")!r}
for _ in range(200):
    time.sleep(0.2)
    try:
        text = open(target).read()
        open(target, "w").write(text.replace("detached_process_rewrites_csv,", "detached_process_rewrites_csv,,FORGED,"))
    except OSError:
        pass
"""
subprocess.Popen([sys.executable, "-c", _script, "{MARKER}"], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)'''],
                                          FAKES, (0, 0), []),
        "rewrites_other_submission": ([f'''for _path in [{str(other)!r}, {str(paths["out"])!r} + "/gradebook.csv"]:
    try:
        open(_path, "w").write("{{}}")
    except OSError:
        pass''', f'raise OSError("could not rewrite {other} nor read {solution_files[0]}")'], FAKES, (0, 0),
                                      ["raised OSError: could not rewrite <path> nor read <path>"]),
        "imports_the_reference": (["from tinymoe.attention import safe_softmax as _reference"],
                                  {"safe_softmax": "def safe_softmax(x):\n    return _reference(x, dim=-1)",
                                   "attention": ATTENTION}, (0, 0), ["used the reference implementation"]),
        "hides_the_reference": (["import importlib\n_module = importlib.import_module('tiny' + 'moe.attention')"],
                                {"safe_softmax": "def safe_softmax(x):\n    return getattr(_module, 'safe_' + 'soft' + 'max')(x, dim=-1)",
                                 "attention": ATTENTION}, (0, 0), ["used the reference implementation"]),
        "torch_softmax_shortcut": ([], {"safe_softmax": "def safe_softmax(x):\n    return x.softmax(dim=-1)",
                                        "attention": ATTENTION}, (0, 1), ["used the reference implementation (.softmax)"]),
        "patches_the_grader": (["import tinymoe.grading.checks as _c\n_c.close = lambda *a, **k: True\n"
                                "_c._value_problem = lambda *a, **k: None\n_c._shape_problem = lambda *a, **k: None"],
                               FAKES, (0, 0), []),
        "swallows_keyboard_interrupt": (["import time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
                                         "    except BaseException:\n        pass"],
                                        {"safe_softmax": SOFTMAX, "attention": ATTENTION}, (1, 1),
                                        ["even when interrupted; it was skipped"]),
        "exits_in_a_cell": (["import os\nos._exit(0)"], {"safe_softmax": SOFTMAX, "attention": ATTENTION}, (1, 1),
                            ["the kernel died while running code cell"]),
    }


def _notebook(release, extra: list[str], answers: dict):
    """The released notebook with its functions replaced by `answers` and the `extra` cells after the
    imports; an attack that steals its functions (no answers of its own) comes last, after the stubs,
    so that whatever it stole is what gets graded."""
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    extra_cells = [nbformat.v4.new_code_cell(source) for source in extra]
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for name, answer in answers.items():
                if f"def {name}(" in cell.source:
                    cell.source = answer
        cells.append(cell)
        if answers and cell.cell_type == "code" and "exercise(" in cell.source:
            cells += extra_cells
    nb.cells = cells if answers else cells + extra_cells
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
    return nb


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    folder, out = tmp_path_factory.mktemp("submissions"), tmp_path_factory.mktemp("grades")
    release = nbformat.read(ROOT / "exercises" / "release" / "01_attention_by_hand.ipynb", as_version=4)
    paths = {name: folder / f"{name}.ipynb" for name in ["honest_correct"]}
    paths["out"] = out
    attacks = _attacks(paths)
    for name, (extra, answers, _, _) in attacks.items():
        nbformat.write(_notebook(release, extra, answers), folder / f"{name}.ipynb")
    before = {p.name: _digest(p) for p in folder.glob("*.ipynb")}
    start = time.monotonic()
    graded = grade_folder("01_attention_by_hand", folder, out, cell_timeout=CELL_TIMEOUT, timeout=TIMEOUT, jobs=2)
    seconds = time.monotonic() - start
    reported = {g.student: g.total for g in graded}
    time.sleep(3)                        # time for any detached helper to try its rewrite
    return {"graded": {g.student: g for g in graded}, "reported": reported, "out": out, "folder": folder,
            "before": before, "attacks": attacks, "seconds": seconds}


def _rows(out: Path) -> dict:
    with open(out / "gradebook.csv", newline="", encoding="utf-8") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


ATTACKS = list(_attacks({"honest_correct": Path("x"), "out": Path("y")}))


@pytest.mark.parametrize("student", ATTACKS)
def test_each_attack_scores_only_what_it_really_solved(attacked, student):
    extra, answers, expected, words = attacked["attacks"][student]
    g = attacked["graded"][student]
    scores = {r.question: r.score for r in g.results}
    if expected == "in-process":                   # honest: exactly what the self-check gives on the same cases
        namespace = {}
        exec("import math\nimport torch\n" + answers["safe_softmax"] + "\n" + answers["attention"], namespace)
        ex = exercise("01")
        local = {q.name: q.result(namespace[q.name], seed=g.seeds[q.name], sources=[]).score for q in ex.questions}
        assert scores == local, f"{student}: the sandbox gave {scores}, the same check in-process {local}"
    else:
        got = (scores["safe_softmax"], scores["attention"])
        assert got == expected, f"{student}: scored {got}, expected {expected}; reason: {_rows(attacked['out'])[student]['reason']}"
    row = _rows(attacked["out"])[student]
    assert float(row["max"]) == 2, f"{student}: the maximum column says {row['max']}, not 2"
    for w in words:
        assert w in row["reason"], f"{student}: the reason should say {w!r}; it says {row['reason']!r}"
    if g.total < g.maximum:
        assert row["reason"], f"{student} is below full marks and its reason column is empty"


def test_honest_correct_gets_full_marks_and_honest_wrong_partial_credit(attacked):
    assert attacked["graded"]["honest_correct"].total == 2
    wrong = {r.question: r for r in attacked["graded"]["honest_wrong"].results}
    assert wrong["safe_softmax"].misconception == "no_max_shift", wrong["safe_softmax"].text
    for r in wrong.values():
        assert 0 < r.score < 1, f"honest but wrong {r.question}: {r.score} points, expected partial credit"


def test_no_submission_file_changed(attacked):
    after = {p.name: _digest(p) for p in attacked["folder"].glob("*.ipynb")}
    changed = [name for name in attacked["before"] if after.get(name) != attacked["before"][name]]
    assert not changed, f"these submissions changed on disk while grading: {changed}"


def test_the_csv_on_disk_still_says_what_the_grader_reported(attacked):
    rows = _rows(attacked["out"])
    on_disk = {s: float(r["total"]) for s, r in rows.items()}
    assert on_disk == pytest.approx(attacked["reported"]), "the gradebook changed after the grader returned"
    assert "FORGED" not in (attacked["out"] / "gradebook.csv").read_text(encoding="utf-8")


def test_nothing_the_grader_started_is_still_running(attacked):
    leftovers = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if MARKER in cmdline or (parent == os.getpid() and "bwrap" in cmdline):
            leftovers.append(f"{proc.name}: {cmdline[:100]}")
    assert not leftovers, f"still running after grading: {leftovers}"


def test_feedback_never_shows_other_files(attacked):
    secret = ROOT / "exercises" / "source"
    for path in (attacked["out"] / "feedback").glob("*"):
        text = path.read_text(encoding="utf-8")
        assert str(secret) not in text and str(attacked["folder"]) not in text, f"{path.name} names a file path"
        assert "### BEGIN SOLUTION" not in text and "honest_correct.ipynb" not in text


def test_the_theft_attacks_do_work_without_the_sandbox(attacked, tmp_path):
    """The control: outside a sandbox the same notebooks really do steal full marks, so their zeros
    above are the sandbox's doing, not attacks that never worked."""
    thefts = ["solutions_switched_on", "reads_solution_files", "reads_other_students_via_proc"]
    folder = tmp_path / "in"
    folder.mkdir()
    for name in thefts:
        (folder / f"{name}.ipynb").write_bytes((attacked["folder"] / f"{name}.ipynb").read_bytes())
    graded = grade_folder("01_attention_by_hand", folder, tmp_path / "out", cell_timeout=CELL_TIMEOUT,
                          timeout=TIMEOUT, jobs=2, sandboxed=False)
    unsafe = {g.student: g.total for g in graded}
    assert unsafe == {name: 2 for name in thefts}, f"without a sandbox the thefts scored {unsafe}"


def test_the_table_of_attacks_is_printed(attacked):
    """Run with -s to see it: every attack, what it scored, and why."""
    rows = _rows(attacked["out"])
    lines = ["| submission | safe_softmax | attention | total | reason |", "|---|---|---|---|---|"]
    for student in ATTACKS:
        row = rows[student]
        lines.append(f"| {student} | {row['safe_softmax']} | {row['attention']} | {row['total']}/{row['max']} | "
                     f"{row['reason'][:140]} |")
    print(f"\n{len(ATTACKS)} submissions graded in {attacked['seconds']:.0f} s (2 at a time)\n" + "\n".join(lines))
    assert len(lines) == len(ATTACKS) + 2
