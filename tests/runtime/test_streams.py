"""Streams end to end: a short video made here from real photos, through every source kind that can run
on this machine (a video file, an image sequence, an HTTP stream served from the test on loopback), into
``aspp-deploy predict`` and the bundle's ``segment``: frames in = frames out, and every frame's mask equal
to still-image ``predict`` on the same decoded frame. Live sources drop frames only when behind, and
count every one; bad sources get one ``error:`` line and leave no file."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aspp_deploy.cli import app
from aspp_deploy.runtime.pipeline import run_stream
from aspp_deploy.runtime.segmenter import Segmenter
from aspp_deploy.runtime.video import Frame, FrameSource, open_source, read_mask_video, source_kind

av = pytest.importorskip("av", reason="streams need PyAV: pip install av")

runner = CliRunner()
FRAMES = 9
SIZE = (96, 72)  # width, height: not the model's 64x64, so geometry is undone per frame
RATE = 15


def _frames_from_photos(folder: Path, count: int) -> list:
    """Real photos (scikit-image / matplotlib, public domain and CC0), panned across a SIZE window."""
    from aspp_deploy.data.photos import write_photos

    photos = write_photos(folder, max_side=160)
    frames = []
    for i in range(count):
        photo = Image.open(photos[i % len(photos)]).convert("RGB").resize((SIZE[0] * 2, SIZE[1]))
        x = (i * 11) % SIZE[0]
        frames.append(np.asarray(photo)[:, x:x + SIZE[0]].copy())
    return frames


def _write_video(path: Path, frames: list, codec: str = "libx264", fmt: str | None = None, pix_fmt: str = "yuv420p",
                 tags: dict | None = None, matrix=None) -> None:
    """RGB frames -> a SIZE video at RATE. ``tags``: the stream's colour tags (``colorspace``...);
    ``matrix``: the reformatter colorspace the frames are converted to YUV with (None: PyAV's, BT.601)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=RATE)
        stream.width, stream.height = SIZE
        stream.pix_fmt = pix_fmt
        for tag, value in (tags or {}).items():
            setattr(stream.codec_context, tag, value)
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if matrix is not None:
                frame = frame.reformat(format=pix_fmt, dst_colorspace=matrix)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _decoded(path: Path) -> list:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """clip.mp4 and clip.ts (the same frames, H.264), the frames as decoded, and those frames as PNGs."""
    folder = tmp_path_factory.mktemp("clips")
    frames = _frames_from_photos(folder / "photos", FRAMES)
    _write_video(folder / "clip.mp4", frames)
    _write_video(folder / "clip.ts", frames, fmt="mpegts")
    decoded = _decoded(folder / "clip.mp4")
    assert len(decoded) == FRAMES and _decoded(folder / "clip.ts")[0].shape == decoded[0].shape
    stills = folder / "stills"
    stills.mkdir()
    for i, rgb in enumerate(decoded):
        Image.fromarray(rgb).save(stills / f"f{i:03d}.png")
    return folder, decoded


@pytest.fixture(scope="module")
def still_masks(clips, exported, tmp_path_factory):
    """Still-image ``predict`` of every decoded frame: the masks every stream must reproduce."""
    folder, _ = clips
    out = tmp_path_factory.mktemp("still-out")
    result = runner.invoke(app, ["predict", str(folder / "stills"), "--model", str(exported), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return [np.asarray(Image.open(out / f"f{i:03d}.mask.png")) for i in range(FRAMES)]


def _video_masks(path: Path, fps: float) -> list:
    return [(int(round(t * fps)), ids) for t, ids in read_mask_video(path)]


def _check_stream(out: Path, stem: str, summary: dict, still_masks: list) -> None:
    run = summary["stream"]
    assert run["frames_in"] == run["frames_out"] == FRAMES and run["dropped"] == 0, run
    assert summary["size"] == list(SIZE) and summary["fps"] == pytest.approx(RATE)
    masks = _video_masks(out / f"{stem}.mask.mov", summary["fps"])
    assert [i for i, _ in masks] == list(range(FRAMES))
    for (i, ids), still in zip(masks, still_masks):
        assert ids.shape == still.shape == (SIZE[1], SIZE[0])
        np.testing.assert_array_equal(ids, still, err_msg=f"frame {i}")


def test_video_file_masks_equal_still_predict(clips, exported, still_masks, tmp_path):
    folder, decoded = clips
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(folder / "clip.mp4"), "--model", str(exported), "--out", str(out),
                                 "--overlay", "--frame-masks", "--frame-json", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r.json").read_text())
    _check_stream(out, "clip", summary, still_masks)
    assert "FPS" in result.output and "pace:" in result.output
    # per-frame PNGs: the same masks, palette mode
    pngs = sorted((out / "clip.masks").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(FRAMES)]
    for png, still in zip(pngs, still_masks):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), still)
    # per-frame JSON lines: areas add up to the frame, and match the mask
    lines = [json.loads(line) for line in (out / "clip.frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(FRAMES))
    for record, still in zip(lines, still_masks):
        assert sum(a["pixels"] for a in record["areas"].values()) == still.size
        for area in record["areas"].values():
            assert area["pixels"] == int((still == area["id"]).sum())
    assert lines[1]["time"] == pytest.approx(1 / RATE, abs=1e-6)
    # the overlay video: every frame, the source's size and rate, class 0 pixels keep the image
    overlays = _decoded(out / "clip.overlay.mp4")
    assert len(overlays) == FRAMES and overlays[0].shape == (SIZE[1], SIZE[0], 3)
    with av.open(str(out / "clip.overlay.mp4")) as container:
        assert Fraction(container.streams.video[0].average_rate) == RATE
    background = still_masks[0] == 0
    if background.any():  # lossy H.264 both ways: close, not equal
        assert np.abs(overlays[0][background].astype(int) - decoded[0][background].astype(int)).mean() < 8
    totals = {r["class"]: r for r in summary["classes"]}
    assert sum(r["pixels"] for r in totals.values()) == FRAMES * SIZE[0] * SIZE[1]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_fused_model_streams_the_same_masks(clips, fused_exported, still_masks, tmp_path):
    """uint8 pixels in, uint8 class ids out (``--fused-io``): the same masks as the unfused model's stills."""
    folder, _ = clips
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(folder / "clip.mp4"), "--model", str(fused_exported), "--out", str(out),
                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    _check_stream(out, "clip", json.loads((tmp_path / "r.json").read_text()), still_masks)


def test_image_sequences_glob_and_printf(clips, exported, still_masks, tmp_path):
    folder, _ = clips
    for pattern in ("f*.png", "f%03d.png"):
        out = tmp_path / pattern.replace("*", "glob").replace("%", "pct")
        result = runner.invoke(app, ["predict", str(folder / "stills" / pattern), "--model", str(exported),
                                     "--out", str(out), "--fps", str(RATE), "--json", str(out) + ".json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(Path(str(out) + ".json").read_text())
        assert summary["source_kind"] == "sequence"
        _check_stream(out, "stills", summary, still_masks)


@pytest.fixture
def http_server(clips):
    """The clip folder served over HTTP on loopback, from this test's own process."""
    folder, _ = clips
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_stream_frames_in_equal_frames_out(http_server, exported, still_masks, tmp_path):
    url = f"{http_server}/clip.ts"
    assert source_kind(url) == "stream"
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", url, "--model", str(exported), "--out", str(out), "--no-drop",
                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["stream"]["live"] is True
    stem = Path(summary["outputs"]["mask_video"]).name[:-len(".mask.mov")]
    assert stem.startswith("127_0_0_1") and "/" not in stem
    _check_stream(out, stem, summary, still_masks)
    # a video file on a web server (its length known) is not live: every frame, without --no-drop
    with open_source(f"{http_server}/clip.mp4") as source:
        assert not source.live and source.frames == FRAMES


def test_bundle_runtime_segments_a_video(clips, exported, still_masks, tmp_path):
    from aspp_deploy.runtime.__main__ import main

    folder, _ = clips
    out = tmp_path / "overlays"
    assert main(["segment", "--input", str(folder / "clip.mp4"), "--onnx", str(exported), "--out", str(out),
                 "--runtime", "onnxruntime"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip.mask.mov", "clip.overlay.mp4"]
    masks = _video_masks(out / "clip.mask.mov", RATE)
    assert len(masks) == FRAMES
    for (_, ids), still in zip(masks, still_masks):
        np.testing.assert_array_equal(ids, still)


def test_frame_overlay_matches_the_still_image_overlay(clips, still_masks):
    from aspp_deploy.runtime.images import overlay
    from aspp_deploy.runtime.video import FrameOverlay

    _, decoded = clips
    for alpha in (0.0, 0.5, 0.8):
        fast = FrameOverlay(None, alpha)(decoded[0], still_masks[0])
        slow = np.asarray(overlay(decoded[0], still_masks[0], None, alpha))
        assert fast.shape == slow.shape and np.abs(fast.astype(int) - slow.astype(int)).max() <= 1


def _decoded_frames(path: Path) -> list:
    with open_source(str(path)) as source:
        return list(source)


def _class_blocks(shape: tuple) -> np.ndarray:
    """Three classes in blocks with edges on odd rows and columns (chroma samples shared by two classes)."""
    mask = np.zeros(shape, np.uint8)
    mask[5:40, 7:50] = 1
    mask[31:70, 41:93] = 2
    return mask


def _interior(mask: np.ndarray, margin: int = 3) -> np.ndarray:
    """Pixels at least ``margin`` pixels away from any other class (chroma there is not shared)."""
    padded = np.pad(mask, margin, mode="edge")
    h, w = mask.shape
    same = np.ones(mask.shape, bool)
    for dy in range(2 * margin + 1):
        for dx in range(2 * margin + 1):
            same &= padded[dy:dy + h, dx:dx + w] == mask
    return same


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8])
def test_yuv_overlay_is_the_rgb_overlay_blended_in_yuv(clips, still_masks, alpha):
    """The overlay video blends on the decoded 4:2:0 frame. Converted to RGB, it is closer to the still-image
    overlay of the decoded frame than that overlay itself once the encoder took it to 4:2:0 (what the
    overlay video held before): everywhere on average, and away from class edges within rounding."""
    from aspp_deploy.runtime.images import overlay
    from aspp_deploy.runtime.video import YuvOverlay

    folder, _ = clips
    frames = _decoded_frames(folder / "clip.mp4")
    assert all(f.yuv is not None for f in frames)  # H.264 4:2:0: the frame itself travels with its RGB
    blend = YuvOverlay(None, alpha)
    for frame, mask in ((frames[0], still_masks[0]), (frames[1], _class_blocks(frames[1].rgb.shape[:2]))):
        i420 = blend(frame.yuv, mask)
        assert i420.shape == (SIZE[1] * 3 // 2, SIZE[0]) and i420.dtype == np.uint8
        got = av.VideoFrame.from_ndarray(i420, format="yuv420p").to_ndarray(format="rgb24").astype(int)
        want = np.asarray(overlay(frame.rgb, mask, None, alpha))
        before = av.VideoFrame.from_ndarray(want, format="rgb24").reformat(format="yuv420p").to_ndarray(format="rgb24")
        diff, diff_before = np.abs(got - want.astype(int)), np.abs(before.astype(int) - want.astype(int))
        assert diff.mean() <= diff_before.mean(), (diff.mean(), diff_before.mean())
        inside = _interior(mask)
        assert inside.any() and diff[inside].mean() <= diff_before[inside].mean()
        assert np.percentile(diff[inside], 99) <= 3
        if alpha == 0.0:  # nothing to blend: the decoded frame, exactly
            np.testing.assert_array_equal(i420, frame.yuv.to_ndarray())


def test_the_overlay_video_blends_in_rgb_when_the_source_has_no_4_2_0_frame(clips, tmp_path):
    """Image sequences, full-range (MJPEG) and odd-sized sources carry no 4:2:0 frame: their overlay is
    blended in RGB, and both ways give the same video within H.264's loss."""
    from aspp_deploy.runtime.video import OverlayVideo

    folder, _ = clips
    frames = _decoded_frames(folder / "clip.mp4")
    mjpeg = tmp_path / "clip.avi"
    _write_video(mjpeg, [f.rgb for f in frames], codec="mjpeg", pix_fmt="yuvj420p")
    assert all(f.yuv is None for f in _decoded_frames(mjpeg))
    bt2020 = tmp_path / "bt2020.mp4"  # another matrix than BT.601 and BT.709: swscale converts it
    _write_video(bt2020, [f.rgb for f in frames[:2]], tags={"colorspace": 9})  # AVCOL_SPC_BT2020_NCL
    assert [f.yuv for f in _decoded_frames(bt2020)] == [None, None]
    assert all(f.yuv is None for f in _decoded_frames(folder / "stills" / "f%03d.png"))
    videos = {}
    for kind, items in (("yuv", frames), ("rgb", [Frame(f.index, f.rgb) for f in frames])):
        videos[kind] = tmp_path / f"{kind}.mp4"
        writer = OverlayVideo(videos[kind], Fraction(RATE), None, 0.5, items[0])
        for frame in items:
            writer.add(frame, _class_blocks(frame.rgb.shape[:2]))
        writer.close()
    from aspp_deploy.runtime.images import overlay

    exact = [np.asarray(overlay(f.rgb, _class_blocks(f.rgb.shape[:2]), None, 0.5)).astype(int) for f in frames]
    errors = {}
    for kind, path in videos.items():
        decoded = _decoded(path)
        assert len(decoded) == FRAMES
        errors[kind] = np.mean([np.abs(d.astype(int) - e).mean() for d, e in zip(decoded, exact)])
    assert errors["yuv"] < 6 and errors["rgb"] < 6, errors  # H.264 at CRF 20 on a 96 x 72 frame: about 4


def test_the_overlay_thread_raises_its_error_on_the_writing_thread(clips, tmp_path):
    from aspp_deploy.runtime.video import OverlayVideo

    folder, _ = clips
    frames = _decoded_frames(folder / "clip.mp4")
    writer = OverlayVideo(tmp_path / "o.mp4", Fraction(RATE), None, 0.5, frames[0])
    writer.add(frames[0], np.zeros((4, 4), np.uint8))  # a mask of the wrong size
    with pytest.raises(ValueError, match="4x4 mask for a 96x72 frame"):
        for frame in frames[1:]:
            writer.add(frame, np.zeros(frame.rgb.shape[:2], np.uint8))
        writer.close()
    writer.close()  # raised once: closing again (as an exit stack does) finishes quietly
    # an error seen only when closing is raised there
    writer = OverlayVideo(tmp_path / "p.mp4", Fraction(RATE), None, 0.5, frames[0])
    writer.add(frames[0], np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="4x4 mask"):
        writer.close()


def test_an_interrupted_close_still_finishes_the_overlay_video(clips, tmp_path, monkeypatch):
    """Ctrl-C while the queued frames are encoded: the rest are dropped and the file still ends (and
    PyAV before 17, whose frames have no primaries or transfer tags, writes the tags it has)."""
    from types import SimpleNamespace

    from aspp_deploy.runtime.video import OverlayVideo, OverlayVideoWriter

    folder, _ = clips
    frames = _decoded_frames(folder / "clip.mp4")
    old_pyav_frame = SimpleNamespace(colorspace=frames[0].yuv.colorspace, color_range=frames[0].yuv.color_range)
    OverlayVideoWriter(tmp_path / "old.mp4", SIZE, Fraction(RATE), like=old_pyav_frame).close()
    writer = OverlayVideo(tmp_path / "o.mp4", Fraction(RATE), None, 0.5, frames[0])
    for frame in frames:
        writer.add(frame, _class_blocks(frame.rgb.shape[:2]))
    join, calls = writer._thread.join, []

    def interrupted_join(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return join(*args, **kwargs)

    monkeypatch.setattr(writer._thread, "join", interrupted_join)
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    assert not writer._thread.is_alive() and len(calls) == 2
    assert len(_decoded(tmp_path / "o.mp4")) <= FRAMES  # a whole file, whatever was encoded before the stop
    with pytest.raises(ValueError, match="closed"):
        writer.add(frames[0], _class_blocks(frames[0].rgb.shape[:2]))


def test_the_overlay_thread_is_a_stage_of_the_runs_figures(clips, exported, tmp_path):
    """Blending and encoding the overlay run on their own thread: the run's figures show them as the
    "overlay" stage, and the time the writing stage waited for that thread is the overlay's, not
    writing's (else a slow overlay made "write" look like the stage that sets the pace)."""
    from aspp_deploy.runtime.app import StreamOutputs, segment_stream
    from aspp_deploy.runtime.pipeline import StreamStats
    from aspp_deploy.runtime.segmenter import Segmenter as Seg

    folder, _ = clips
    with Seg(str(exported)) as seg:
        plain = segment_stream(seg, str(folder / "clip.mp4"), tmp_path / "a", StreamOutputs())["stream"]
        both = segment_stream(seg, str(folder / "clip.mp4"), tmp_path / "b", StreamOutputs(overlay_video=True))["stream"]
    assert "overlay" not in plain["ms_per_frame"] and "overlay" in both["ms_per_frame"]
    assert both["ms_per_frame"]["overlay"] > 0 and set(both["stage_share"]) == set(both["ms_per_frame"])
    # the accounting itself: a side stage's busy time is its own, and its wait leaves "write"
    stats = StreamStats(live=False, batch=1)
    stats.busy.update(decode=1.0, preprocess=1.0, inference=2.0, postprocess=0.5, write=4.0)
    stats.side_stages["overlay"] = lambda: (3.5, 3.0)
    assert stats.stage_busy()["write"] == pytest.approx(1.0) and stats.bottleneck() == "overlay"
    stats.side_stages["overlay"] = lambda: (0.5, 0.0)
    assert stats.bottleneck() == "write"


def test_the_overlay_video_keeps_the_sources_colours(tmp_path, exported):
    """A BT.709 source: its YUV goes through unconverted, so the overlay video says BT.709 too, and its
    tint is the palette colour converted with that matrix."""
    src = tmp_path / "hd.mp4"
    rgb = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    rgb[:] = (90, 140, 200)
    _write_video(src, [rgb] * 3, tags={"colorspace": 1, "color_primaries": 1, "color_trc": 1},  # BT.709
                 matrix=av.video.reformatter.Colorspace.ITU709)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(src), "--model", str(exported), "--out", str(out), "--overlay",
                                 "--no-mask-video", "--alpha", "0.0"])
    assert result.exit_code == 0, result.output
    with av.open(str(out / "hd.overlay.mp4")) as container:
        frame = next(container.decode(video=0))
        assert (frame.colorspace, container.streams.video[0].codec_context.colorspace) == (1, 1)
        back = frame.to_ndarray(format="rgb24").astype(int)  # converted with the frame's own matrix
    assert np.abs(back - rgb.astype(int)).max() <= 3
    # the tint is converted with the frame's matrix: read back with it, it is the RGB overlay's colour
    from aspp_deploy.runtime.images import overlay
    from aspp_deploy.runtime.video import YuvOverlay

    frame = _decoded_frames(src)[0]
    assert frame.yuv is not None and frame.yuv.colorspace == 1
    mask = _class_blocks(frame.rgb.shape[:2])
    blended = av.VideoFrame.from_ndarray(YuvOverlay(None, 0.8)(frame.yuv, mask), format="yuv420p")
    blended.colorspace = 1
    diff = np.abs(blended.to_ndarray(format="rgb24").astype(int) - np.asarray(overlay(frame.rgb, mask, None, 0.8)))
    assert diff[_interior(mask)].max() <= 3, diff[_interior(mask)].max()


class _LiveBurst(FrameSource):
    """A live source that delivers its frames as fast as it can (a camera faster than the model)."""

    kind, live = "camera", True

    def __init__(self, frames: list, repeat: int) -> None:
        super().__init__("burst")
        self.all = [frames[i % len(frames)] for i in range(repeat)]

    def __iter__(self):
        for i, rgb in enumerate(self.all):
            yield Frame(i, rgb)


def test_a_stream_opens_onnx_runtime_without_busy_waiting(exported):
    """In the pipeline other threads need the CPU between runs: ONNX Runtime's threads must sleep there."""
    from aspp_deploy.predict import open_model

    with open_model("onnxruntime", exported, pipelined=True) as model:
        options = model.runner.engine.session.get_session_options()  # type: ignore[attr-defined]
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with open_model("onnxruntime", exported) as model:  # still images, bench, compare: ONNX Runtime's default
        options = model.runner.engine.session.get_session_options()  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="allow_spinning"):
            options.get_session_config_entry("session.intra_op.allow_spinning")


def test_live_source_drops_only_when_behind_and_counts_every_drop(clips, exported):
    _, decoded = clips
    with Segmenter(exported) as seg:
        written = []
        stats = run_stream(_LiveBurst(decoded, 120), seg, lambda f, m: written.append(f.index), depth=2)
        assert stats.frames_in == 120 and stats.dropped > 0
        assert stats.frames_out + stats.dropped == stats.frames_in == stats.to_dict()["frames_in"]
        assert written == sorted(written) and len(set(written)) == len(written) == stats.frames_out
        assert written[-1] == 119  # the newest frame is never the one dropped
        kept = []
        stats = run_stream(_LiveBurst(decoded, 40), seg, lambda f, m: kept.append(f.index), drop_late=False, depth=2)
        assert stats.dropped == 0 and kept == list(range(40))
        # a file never drops, whatever drop_late says
        with open_source(str(clips[0] / "clip.mp4")) as source:
            stats = run_stream(source, seg, lambda f, m: None, drop_late=True, depth=1)
        assert stats.dropped == 0 and stats.frames_out == FRAMES and not source.live


def test_errors_stop_every_stage_and_are_raised(clips, exported):
    _, decoded = clips
    with Segmenter(exported) as seg:
        def consume(frame, mask):
            if frame.index == 3:
                raise RuntimeError("disk full")
        with pytest.raises(RuntimeError, match="disk full"):
            run_stream(_LiveBurst(decoded, 50), seg, consume, drop_late=False)

        def interrupt(frame, mask):
            if frame.index == 2:
                raise KeyboardInterrupt
        stats = run_stream(_LiveBurst(decoded, 50), seg, interrupt, drop_late=False)
        assert stats.stopped_by == "interrupt" and stats.frames_out == 2
        assert stats.frames_out + stats.dropped + stats.unfinished == stats.frames_in


def test_bad_sources_one_error_line_and_no_file(clips, exported, tmp_path):
    folder, _ = clips
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out = tmp_path / "out"
    cases = [
        ([str(corrupt)], "broken.mp4"),
        ([str(tmp_path / "missing.mp4")], "video not found"),
        (["ftp://example.invalid/x"], "unknown stream protocol"),
        ([str(folder / "stills" / "nothing*.png")], "no images match"),
        (["http://127.0.0.1:9/none.ts"], "cannot open"),
        (["/dev/video63"], "cannot open /dev/video63"),  # a camera that is not there (V4L2)
        ([str(folder / "clip.mp4"), str(folder / "stills")], "one stream at a time"),
        ([str(folder / "stills"), "--frame-masks"], "only for a stream"),
        ([str(folder / "clip.mp4"), "--no-mask-video"], "nothing to write"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["predict", *args, "--model", str(exported), "--out", str(out)])
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output and message in result.output, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, result.output
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], (args, list(out.rglob("*")))


def test_without_pyav_says_how_to_get_it(clips, exported, tmp_path, monkeypatch):
    import sys

    folder, _ = clips
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    result = runner.invoke(app, ["predict", str(folder / "clip.mp4"), "--model", str(exported),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "pip install av" in result.output and "Traceback" not in result.output
