"""The sheet: one cell per number, coloured by role, shape in the caption, a picture when too big."""
from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

import tinymoe
from tinymoe import viz
from tinymoe.viz.palette import CATEGORY_COLOURS, ROLE_EDGE, hex_colours

CELL = re.compile(r'<td style="border:\dpx solid [^"]*?background:(#[0-9a-f]{6})">([^<]*)</td>')


def data_cells(html: str) -> list[tuple[str, str]]:
    """(text, background) of every numbered cell (label cells have no border)."""
    return [(text, colour) for colour, text in CELL.findall(html)]


class TagBalance(HTMLParser):
    """Counts opened and closed tags, so a test can tell the markup is well formed."""

    VOID = {"img", "br", "hr", "meta", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tags = [], [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


def assert_static_html(html: str) -> None:
    parser = TagBalance()
    parser.feed(html)
    assert not parser.errors and not parser.stack, f"unbalanced markup: {parser.errors[:3]} open: {parser.stack[:3]}"
    assert "script" not in parser.tags, "a sheet must not need JavaScript (no <script>)"
    assert "<style" not in html and "class=" not in html, "sheets use inline styles only (previews strip <style>)"


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def test_one_cell_per_number_with_two_decimals():
    x = torch.tensor([[1.234, -0.5], [0.0, 2.0]])
    cells = data_cells(viz.sheet(x, "x").html)
    assert [t for t, _ in cells] == ["1.23", "-0.50", "0.00", "2.00"], f"cells read {cells}"


def test_negative_zero_is_written_as_zero():
    texts = [t for t, _ in data_cells(viz.sheet(torch.tensor([-0.001, 0.5]), "x").html)]
    assert texts == ["0.00", "0.50"], f"-0.001 at 2 decimals should read 0.00, got {texts}"


def test_whole_numbers_are_written_without_decimals():
    texts = [t for t, _ in data_cells(viz.sheet(torch.tensor([[3.0, -1.0], [0.0, 2.0]]), "X").html)]
    assert texts == ["3", "-1", "0", "2"], f"a hand-made example of whole numbers should read like one: {texts}"


def test_masks_and_token_ids_are_written_as_integers():
    mask = viz.sheet(tinymoe.causal_mask(3), "mask")
    assert [t for t, _ in data_cells(mask.html)] == ["1", "0", "0", "1", "1", "0", "1", "1", "1"]
    tokens = viz.sheet(torch.tensor([[5, 7, 1]]), "tokens", role="input")
    assert [t for t, _ in data_cells(tokens.html)] == ["5", "7", "1"]
    assert tokens.panels[0].shape == (1, 3), "token ids (1, T) should drop the batch and read as one row"


BORDER = re.compile(r'<td style="border:(\d)px solid (#[0-9a-f]{6});padding')


@pytest.mark.parametrize("role", ["weight", "bias", "input", "output", "buffer", "activation"])
def test_the_border_says_the_role_and_the_fill_says_the_value(role):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    html = viz.sheet(x, "t", role=role).html
    cells = data_cells(html)
    assert len(cells) == 12
    borders = set(BORDER.findall(html))
    assert {edge for _, edge in borders} == {ROLE_EDGE[role]}, f"role {role}: borders {borders}"
    expected = list(hex_colours(x.numpy()).reshape(-1))
    assert [c for _, c in cells] == expected, f"role {role}: the fill should be the value's colour"


def test_role_borders_are_distinct_and_none_is_a_value_colour():
    edges = [ROLE_EDGE[r] for r in ("weight", "bias", "input", "output", "buffer", "activation")]
    assert len(set(edges)) == len(edges), f"two roles share a border colour: {edges}"
    r, g, b = rgb(ROLE_EDGE["weight"])
    assert r > 150 and g < 100 and b < 100, f"trainable weights are marked red: {ROLE_EDGE['weight']}"


def test_activation_is_blue_for_positive_orange_for_negative_white_at_zero():
    cells = dict((t, c) for t, c in data_cells(viz.sheet(torch.tensor([2.5, -2.5, 0.0, 1.25]), "a").html))
    r, g, b = rgb(cells["2.50"])
    assert b > r, f"+max should be blue, got {cells['2.50']}"
    r, g, b = rgb(cells["-2.50"])
    assert r > g > b, f"-max should be orange (red is kept for 'trainable'), got {cells['-2.50']}"
    assert cells["0.00"] == "#ffffff", f"zero should be white, got {cells['0.00']}"
    assert sum(rgb(cells["1.25"])) > sum(rgb(cells["2.50"])), "a smaller value should be a lighter blue"


def test_ids_get_categorical_colours_not_the_numeric_scale():
    ids = torch.tensor([[0, 2, 1], [2, -1, 0]])
    cells = data_cells(viz.sheet(ids, "moe.expert_ids").html)
    colours = {text: colour for text, colour in cells}
    assert colours["0"] == CATEGORY_COLOURS[0] and colours["1"] == CATEGORY_COLOURS[1] and colours["2"] == CATEGORY_COLOURS[2]
    assert colours["-1"] == "#ffffff", "no expert (-1) stays blank"
    amounts = data_cells(viz.sheet(ids, "counts").html)
    assert {c for _, c in amounts} != set(colours.values()), "a tensor of amounts keeps the numeric scale"
    with pytest.raises(ValueError, match="whole-number ids"):
        viz.sheet(torch.randn(2, 2), "gates", categorical=True)


def test_caption_has_name_role_and_shape():
    s = viz.sheet(torch.zeros(1, 6, 5), "attn.x", role="input")
    assert "attn.x" in s.html and "(1, 6, 5)" in s.html and "input" in s.html
    w = viz.sheet(torch.zeros(3, 5), "W_q", role="weight")
    assert "(3, 5)" in w.html and "trainable" in w.html, "a weight's caption should say it is trainable"
    assert "(5,)" in viz.sheet(torch.zeros(5), "gamma", role="weight").html, "a 1-D shape is written (5,)"


def test_orientation_is_labelled_and_by_hand_puts_tokens_in_columns():
    x = torch.arange(12.0).reshape(1, 4, 3)                              # (batch, T=4, d=3)
    pytorch = viz.sheet(x, "x", role="input")
    by_hand = viz.sheet(x, "x", role="input", orientation="by_hand")
    assert pytorch.panels[0].shape == (4, 3) and by_hand.panels[0].shape == (3, 4), \
        f"pytorch draws (T, d), by_hand (d, T); got {pytorch.panels[0].shape} and {by_hand.panels[0].shape}"
    np.testing.assert_array_equal(by_hand.panels[0], pytorch.panels[0].T)
    assert "tokens as rows" in pytorch.html and "tokens as columns" in by_hand.html
    assert ">t0<" in pytorch.html and ">d0<" in pytorch.html, "tokens are labelled t0.., features d0.."


def test_weights_are_drawn_out_by_in_in_both_orientations():
    w = torch.randn(3, 5)
    for orientation in ("pytorch", "by_hand"):
        s = viz.sheet(w, "W", role="weight", orientation=orientation)
        assert s.panels[0].shape == (3, 5), f"{orientation}: nn.Linear's (out, in) is also the by-hand layout"


def test_heads_are_drawn_side_by_side_on_one_scale():
    trace = tinymoe.Trace()
    config = tinymoe.ModelConfig(d_model=6, n_heads=3, head_dim=2, position="none")
    tinymoe.MultiHeadAttention(config)(torch.randn(1, 4, 6), trace)
    s = viz.show(trace, "attn.weights")
    assert s.shape == (1, 3, 4, 4) and len(s.panels) == 3, f"one grid per head expected, got {len(s.panels)}"
    assert s.panel_titles == ["head 0", "head 1", "head 2"]
    assert len(data_cells(s.html)) == 3 * 16


def test_batch_bigger_than_one_gives_a_grid_per_sequence():
    s = viz.sheet(torch.randn(2, 3, 4), "x")
    assert [p.shape for p in s.panels] == [(3, 4), (3, 4)] and s.panel_titles == ["batch 0", "batch 1"]


def test_past_max_cells_a_picture_replaces_the_cells():
    big = torch.randn(1, 4, 50, 50)                                      # 10,000 numbers
    s = viz.sheet(big, "big.scores", max_cells=600)
    assert s.degraded, "10,000 numbers must not become a 10,000-cell table"
    assert "<td" not in s.html, "a summarised sheet should have no cells at all"
    assert "data:image/png;base64," in s.html and "(1, 4, 50, 50)" in s.html
    assert len(s.html) < 60_000, f"the summary is {len(s.html):,} characters; expected a small picture"
    assert_static_html(s.html)


def test_exactly_max_cells_still_shows_cells():
    s = viz.sheet(torch.randn(20, 30), "x", max_cells=600)
    assert not s.degraded and len(data_cells(s.html)) == 600


def test_summary_picture_is_a_valid_png_with_the_tensor_in_it():
    """Decoded by Pillow (not by our own code): one pixel per value, blue where the values are +."""
    import base64
    import io
    Image = pytest.importorskip("PIL.Image")
    values = torch.ones(40, 40)
    values[:, 20:] = -1.0                                              # left half +1, right half -1
    s = viz.sheet(values, "halves", max_cells=100)
    png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", s.html).group(1))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (40, 40), f"one pixel per value expected; image is {image.size}"
    r, g, b = image.getpixel((0, 0))
    assert b > r, f"+1 should be drawn blue, got rgb{(r, g, b)}"
    r, g, b = image.getpixel((39, 0))
    assert r > b, f"-1 should be drawn red, got rgb{(r, g, b)}"
    shown = re.search(r'width="(\d+)" height="(\d+)"', s.html).groups()
    assert shown[0] == shown[1] and int(shown[0]) % 40 == 0 and int(shown[0]) > 40, \
        f"the page should scale each value to a square of whole pixels, got {shown}"


def test_noisy_summary_pictures_stay_small():
    s = viz.sheet(torch.randn(1, 8, 128, 32), "attn.q", max_cells=600)
    assert len(s.html) < 50_000, f"a 32,768-value summary took {len(s.html):,} characters"


def test_sheets_are_static_html():
    trace = tinymoe.Trace()
    tinymoe.MultiHeadAttention(tinymoe.ModelConfig(d_model=4, n_heads=2))(torch.randn(1, 3, 4), trace)
    for name in trace.keys():
        assert_static_html(viz.show(trace, name).html)
        assert_static_html(viz.show(trace, name, orientation="by_hand").html)
    assert_static_html(viz.legend().html)


def test_show_uses_the_role_the_core_recorded():
    trace = tinymoe.Trace()
    tinymoe.MultiHeadAttention(tinymoe.ModelConfig(d_model=4, n_heads=2))(torch.randn(1, 3, 4), trace)
    assert viz.show(trace, "attn.W_q").role == "weight"
    assert viz.show(trace, "attn.x").role == "input"
    assert viz.show(trace, "attn.out").role == "output"
    assert viz.show(trace, "attn.rope_cos").role == "buffer"
    with pytest.raises(KeyError, match="attn.nope"):
        viz.show(trace, "attn.nope")


def test_labels_can_be_given_and_must_fit():
    s = viz.sheet(torch.zeros(2, 3), "x", row_labels=["q0", "q1"], col_labels=["k0", "k1", "k2"])
    assert ">q1<" in s.html and ">k2<" in s.html
    with pytest.raises(ValueError, match="2 row labels"):
        viz.sheet(torch.zeros(3, 3), "x", row_labels=["a", "b"])


def test_bad_role_or_orientation_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="by_hand"):
        viz.sheet(torch.zeros(2), orientation="sideways")
    with pytest.raises(ValueError, match="weight"):
        viz.sheet(torch.zeros(2), role="parameter")


def test_non_finite_values_are_written_out():
    texts = [t for t, _ in data_cells(viz.sheet(torch.tensor([float("-inf"), float("nan"), 1.5]), "s").html)]
    assert texts == ["-inf", "nan", "1.50"]


def test_scalar_is_one_cell():
    s = viz.sheet(torch.tensor(3.5), "loss")
    assert [t for t, _ in data_cells(s.html)] == ["3.50"] and s.shape == ()


def test_a_caption_note_replaces_the_orientation_text():
    pairs = torch.tensor([[1.0, 0.5], [0.25, 0.75]])
    default = viz.sheet(pairs, "x", role="input")
    assert "tokens as rows (PyTorch)" in default.html, "the automatic note should stay when none is given"
    s = viz.sheet(pairs, "q_m · k_n", note="rows: (m, n) pairs")
    assert "rows: (m, n) pairs" in s.html and "tokens as" not in s.html, "the given note should replace the automatic one"
    assert "tokens as" not in viz.sheet(torch.zeros(1, 3, 2), "x", note="").html, 'note="" should show no note'
    assert "&lt;b&gt;" in viz.sheet(torch.zeros(2, 2), "x", note="<b>").html, "a note is text, escaped like a name"
    trace = tinymoe.Trace()
    tinymoe.MultiHeadAttention(tinymoe.ModelConfig(d_model=4, n_heads=2))(torch.randn(1, 3, 4), trace)
    assert "one row per token" in viz.show(trace, "attn.x", note="one row per token").html, "show() passes the note on"


@pytest.mark.parametrize("shape", [(10, 0), (0,), (0, 5), (1, 2, 0, 3)])
def test_an_empty_tensor_gets_its_caption_and_a_note_instead_of_cells(shape):
    s = viz.sheet(torch.zeros(shape), "attn.empty")
    text = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    assert s.shape == shape and text in s.html, f"the caption should give the shape {text}"
    assert "empty tensor" in s.html and "size 0" in s.html, "the sheet should say why nothing is drawn"
    assert s.cells == 0 and not data_cells(s.html) and not s.degraded
    assert "empty" in repr(s)
    assert_static_html(s.html)


def test_heads_sit_in_a_wrapping_row_and_a_single_grid_does_not():
    trace = tinymoe.Trace()
    tinymoe.MultiHeadAttention(tinymoe.ModelConfig(d_model=6, n_heads=3, head_dim=2))(torch.randn(1, 10, 6), trace)
    heads = viz.show(trace, "attn.weights")
    assert "display:flex;flex-wrap:wrap" in heads.html, "the head panels should be allowed to wrap onto further lines"
    assert heads.html.count("flex:none") == 3, "each head should be one unbreakable item of the wrapping row"
    assert_static_html(heads.html)
    single = viz.sheet(torch.zeros(3, 4), "x")
    assert "flex" not in single.html and "white-space:nowrap" in single.html, "a single grid keeps its plain layout"


def test_three_heads_of_ten_by_ten_stay_inside_a_1000px_page():
    """Laid out by a real browser (headless Chromium): no grid passes the right edge of a 1000 px page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    sync_api = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("needs a system Chromium: apt-get install -y chromium")
    trace = tinymoe.Trace()
    tinymoe.MultiHeadAttention(tinymoe.ModelConfig(d_model=6, n_heads=3, head_dim=2))(torch.randn(1, 10, 6), trace)
    labels = dict(row_labels=[f"q{i}" for i in range(10)], col_labels=[f"k{j}" for j in range(10)])
    html = viz.row(viz.show(trace, "attn.weights", **labels), viz.show(trace, "attn.scores", **labels)).html
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.set_content(f'<body style="margin:0"><div style="width:1000px">{html}</div></body>')
            rights = page.eval_on_selector_all("table", "ts => ts.map(t => t.getBoundingClientRect().right)")
            tops = page.eval_on_selector_all("table", "ts => ts.map(t => t.getBoundingClientRect().top)")
        finally:
            browser.close()
    assert len(rights) == 6, f"expected 6 grids (3 heads, 2 sheets), found {len(rights)}"
    assert max(rights) <= 1000, f"a grid runs off a 1000 px page: right edges {[round(r) for r in rights]}"
    assert len({round(t) for t in tops}) > 2, "three 10 x 10 heads cannot share one line at 1000 px: they should wrap"
