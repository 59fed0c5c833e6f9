#!/usr/bin/env python3
"""DICOM input (core/image_dicom.cc) against references computed here.

Every file is generated at test time with pydicom (and DCMTK's dcmconv / dcmcjpls / dcmcrle /
dcmcjpeg / img2dcm for the other encodings). The expected 8-bit pixels come from this test's own
float64 numpy computation of the Modality LUT and the VOI LUT function of DICOM PS3.3
C.11.2.1.2 on pydicom's pixel array; DCMTK's dcm2pnm is a second, independent oracle for a few
files. Decoding goes through tests/dicom/dicom_decode (gs_dicom_decode at full size, no resize)
and, when the gemmashard binary has it, `gemmashard image-prep --mime application/dicom` (decode
+ resize; a square image at its own size is not resampled). Every pixel within one 8-bit step.

Bad inputs (truncated, no PixelData, unsupported transfer syntaxes, multi-frame, over-size,
BitsAllocated 32, not DICOM) must exit 2 with a precise message, and the patient name / ID put
into every file must never appear in any output.

usage: test_dicom.py DICOM_DECODE GEMMASHARD SCRATCH_DIR [--bench | --write-seeds]
  --bench: only the timings (2048 x 2500 CR, 512 x 512 CT), no checks
  --write-seeds: write the seed corpus of tests/fuzz/fuzz_dicom into SCRATCH_DIR
    (python3 tests/dicom/test_dicom.py - - tests/fuzz/corpus/fuzz_dicom --write-seeds)
"""
import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut, convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DECODE, GEMMASHARD, SCRATCH = sys.argv[1], sys.argv[2], sys.argv[3]
BENCH = "--bench" in sys.argv[4:]
PATIENT_NAME = "SECRETDOE^JANE7731"
PATIENT_ID = "PIDSECRET4242"
SECRETS = ["SECRETDOE", "JANE7731", PATIENT_ID, "19370511"]

failures = []
outputs = []  # every stdout / stderr seen, for the PHI check


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=120,
                       **kw)
    if cmd[0] in (DECODE, GEMMASHARD):  # ours; DCMTK's own tools are not under test
        outputs.append(p.stdout + p.stderr)
    return p


def path(name):
    return os.path.join(SCRATCH, name)


# ---- generating files ------------------------------------------------------------------------

def base_dataset(ts=ExplicitVRLittleEndian):
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = fm
    ds.preamble = b"\0" * 128
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19370511"
    ds.Modality = "CR"
    return ds


def make_mono(name, arr, bits_alloc=16, bits_stored=16, signed=False, phot="MONOCHROME2",
              high_garbage=0, **attrs):
    """arr: stored values (signed ints when signed). high_garbage: bits set above HighBit."""
    ds = base_dataset()
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = phot
    ds.BitsAllocated = bits_alloc
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    raw = arr.astype(np.int64) & ((1 << bits_stored) - 1)
    raw |= high_garbage
    dt = "<u1" if bits_alloc == 8 else "<u2"
    ds.PixelData = raw.astype(dt).tobytes()
    ds.save_as(path(name), write_like_original=False)
    return path(name)


def make_colour(name, arr, phot="RGB", planar=0):
    ds = base_dataset()
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = phot
    ds.PlanarConfiguration = planar
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    a = arr.astype(np.uint8)
    ds.PixelData = (a.transpose(2, 0, 1) if planar else a).tobytes()
    ds.save_as(path(name), write_like_original=False)
    return path(name)


# ---- the reference: float64 numpy on pydicom's pixel array -----------------------------------

def stored_values(ds):
    """pydicom's pixel array, reduced to BitsStored bits and sign-extended (pydicom keeps bits
    above HighBit)."""
    a = ds.pixel_array.astype(np.int64)
    bits = int(ds.BitsStored)
    a = (a >> (int(ds.HighBit) + 1 - bits)) & ((1 << bits) - 1)
    if int(ds.PixelRepresentation) == 1:
        a = np.where(a >= (1 << (bits - 1)), a - (1 << bits), a)
    return a


def voi_reference(f, window=None):
    """Modality LUT, then VOI LUT function (PS3.3 C.11.2.1.2) to 0..255, MONOCHROME1 inverted."""
    ds = pydicom.dcmread(f)
    x = stored_values(ds).astype(np.float64)
    x = x * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    fn = "LINEAR"
    if window is not None:
        c, w = window
    elif "WindowCenter" in ds:
        wc, ww = ds.WindowCenter, ds.WindowWidth
        c = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
        w = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
        fn = ds.get("VOILUTFunction", "LINEAR")
    else:  # min-max: [min, max] linearly onto [0, 255]
        lo, hi = x.min(), x.max()
        c, w, fn = (lo + hi) / 2, hi - lo, "LINEAR_EXACT"
    if fn == "LINEAR":
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
        y = np.where(x <= c - 0.5 - (w - 1) / 2, 0, np.where(x > c - 0.5 + (w - 1) / 2, 255, y))
    elif fn == "LINEAR_EXACT":
        y = ((x - c) / w + 0.5) * 255
        y = np.where(x <= c - w / 2, 0, np.where(x > c + w / 2, 255, y))
    else:  # SIGMOID
        y = 255 / (1 + np.exp(-4 * (x - c) / w))
    y = np.clip(np.floor(y + 0.5), 0, 255)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 255 - y
    return np.repeat(y.astype(np.uint8)[:, :, None], 3, axis=2)


def decode(f, window=None, extra=()):
    cmd = [DECODE, f, path("out.rgb")]
    if window is not None:
        cmd += ["--window", "%r,%r" % window]
    p = run(cmd + list(extra))
    if p.returncode != 0:
        return None, p
    w, h = map(int, p.stdout.split()[:2])
    px = np.fromfile(path("out.rgb"), dtype=np.uint8).reshape(h, w, 3)
    return px, p


def compare(what, f, expected, window=None):
    got, p = decode(f, window)
    if got is None:
        check(False, "%s: decode failed: %s" % (what, p.stderr.strip()))
        return None
    if got.shape != expected.shape:
        check(False, "%s: shape %s, expected %s" % (what, got.shape, expected.shape))
        return got
    d = np.abs(got.astype(int) - expected.astype(int)).max()
    check(d <= 1, "%s: max |diff| %d (<= 1)" % (what, d))
    return got


def refused(what, f, must_contain, extra=()):
    _, p = decode(f, extra=extra)
    msg = p.stderr.strip()
    ok = p.returncode == 2 and all(s in msg for s in must_contain)
    check(ok, "%s: exit %d, %r" % (what, p.returncode, msg))


def read_pnm(f):
    """Binary PGM (P5) / PPM (P6), 8-bit."""
    data = open(f, "rb").read()
    fields, pos = [], 0
    while len(fields) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    pos += 1
    w, h = int(fields[1]), int(fields[2])
    ch = 1 if fields[0] == b"P5" else 3
    a = np.frombuffer(data[pos:pos + w * h * ch], dtype=np.uint8).reshape(h, w, ch)
    return np.repeat(a, 3, axis=2) if ch == 1 else a


def dcm2pnm(f, opts):
    out = path("dcmtk.pnm")
    p = run(["dcm2pnm"] + opts + [f, out])
    if p.returncode != 0:
        raise RuntimeError("dcm2pnm failed: " + p.stderr)
    return read_pnm(out)


def dcmtk(tool, *args):
    p = run([tool] + list(args))
    if p.returncode != 0:
        raise RuntimeError("%s failed: %s" % (tool, p.stderr))


def fake_encapsulated(name, ts, fragment=b"\xff\x4f\xff\x51" + bytes(range(60)), size=16, bits=16):
    """A size x size grey image of `bits` bits under compressed transfer syntax ts, whose one
    fragment is `fragment` (by default a made-up bitstream)."""
    ds = base_dataset(ts)
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.save_as(path(name), write_like_original=False)
    return path(name)


def big_ts(name, src):
    """src with its meta header cut inside TransferSyntaxUID, re-typed to the unknown VR "UO"
    (a 4-byte length field) that claims 0xFFFFFF00 bytes."""
    b = bytearray(open(src, "rb").read())
    at = b.index(b"\x02\x00\x10\x00UI")
    b[at + 4:at + 12] = b"UO\0\0" + (0xFFFFFF00).to_bytes(4, "little")
    open(path(name), "wb").write(bytes(b[:at + 40]))
    return path(name)


def jpeg_bomb(name, ts):
    """An 8 x 8 DICOM image whose progressive JPEG (PIL) frame header says 60000 x 60000."""
    import io
    from PIL import Image
    jb = io.BytesIO()
    Image.fromarray((np.arange(64, dtype=np.uint8) * 3).reshape(8, 8)).save(
        jb, "JPEG", progressive=True, quality=90)
    jb = bytearray(jb.getvalue())
    sof = jb.index(b"\xff\xc2")
    jb[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    return fake_encapsulated(name, ts, bytes(jb), size=8, bits=8)


# ---- the tests --------------------------------------------------------------------------------

def main():
    for tool in ["dcm2pnm", "dcmconv", "dcmcjpls", "dcmcrle", "dcmcjpeg", "img2dcm"]:
        if shutil.which(tool) is None:
            sys.exit("missing DCMTK tool %s (apt-get install dcmtk; deploy/install-deps.sh)" % tool)
    shutil.rmtree(SCRATCH, ignore_errors=True)
    os.makedirs(SCRATCH)
    if BENCH:
        bench()
        sys.exit(1 if failures else 0)
    rng = np.random.default_rng(15)
    t0 = time.time()

    # 16-bit unsigned CR, slope / intercept and a window in the file.
    cr = rng.integers(0, 65536, (64, 80))
    cr[0, :6] = [0, 65535, 30000, 30001, 29999, 12345]
    f_cr = make_mono("cr16.dcm", cr, RescaleSlope="0.5", RescaleIntercept="100",
                     WindowCenter="16000", WindowWidth="20000")
    ref_cr = voi_reference(f_cr)
    got_cr = compare("CR 16-bit unsigned, slope/intercept, file window", f_cr, ref_cr)
    check(got_cr is not None and len(np.unique(got_cr)) > 100, "CR: output is not flat")
    # The request's window wins over the file's.
    compare("CR, request window 30000,9000", f_cr, voi_reference(f_cr, (30000.0, 9000.0)),
            (30000.0, 9000.0))
    # Second oracle: DCMTK's own renderer (first window of the file).
    compare("CR vs dcm2pnm +Wi 1", f_cr, dcm2pnm(f_cr, ["+Wi", "1"]))

    # 12 bits stored in 16, garbage above HighBit, multi-valued window (first one is used).
    m12 = rng.integers(0, 4096, (48, 40))
    f_12 = make_mono("m12.dcm", m12, bits_stored=12, high_garbage=0xA000,
                     WindowCenter=["2000", "100"], WindowWidth=["3000", "50"])
    compare("12 bits stored in 16 (high bits masked), first window", f_12, voi_reference(f_12))

    # Signed 16-bit CT in HU (slope 1, intercept -1024), request windows lung and soft tissue.
    ct = rng.integers(-1000, 3000, (64, 64))
    ct[0, :4] = [-32768, 32767, -1, 0]
    f_ct = make_mono("ct.dcm", ct, signed=True, RescaleSlope="1", RescaleIntercept="-1024",
                     WindowCenter="40", WindowWidth="400", Modality="CT")
    compare("CT signed 16-bit, file window 40/400", f_ct, voi_reference(f_ct))
    for c, w, name in [(-600.0, 1500.0, "lung"), (40.0, 400.0, "soft tissue")]:
        compare("CT signed, request window %s %g/%g" % (name, c, w), f_ct,
                voi_reference(f_ct, (c, w)), (c, w))
    compare("CT vs dcm2pnm +Ww -600 1500", f_ct, dcm2pnm(f_ct, ["+Ww", "-600", "1500"]),
            (-600.0, 1500.0))
    # Signed 12-bit in 16 (sign bit at HighBit 11).
    s12 = rng.integers(-2048, 2048, (32, 32))
    f_s12 = make_mono("s12.dcm", s12, bits_stored=12, signed=True, RescaleSlope="1",
                      RescaleIntercept="0", WindowCenter="0", WindowWidth="1000")
    compare("signed 12 bits stored in 16", f_s12, voi_reference(f_s12))

    # VOI LUT functions other than LINEAR.
    f_le = make_mono("linexact.dcm", ct, signed=True, WindowCenter="500", WindowWidth="2000",
                     VOILUTFunction="LINEAR_EXACT")
    compare("VOI LUT Function LINEAR_EXACT", f_le, voi_reference(f_le))
    f_sg = make_mono("sigmoid.dcm", ct, signed=True, WindowCenter="500", WindowWidth="2000",
                     VOILUTFunction="SIGMOID")
    compare("VOI LUT Function SIGMOID", f_sg, voi_reference(f_sg))

    # A VOI LUT Sequence and no window: its first table, scaled from its bits to 0..255. The
    # reference: pydicom's apply_voi_lut on its apply_modality_lut, and dcm2pnm +Wl 1.
    def voi_lut_file(name, arr, desc_vr, desc, data_vr, data, **attrs):
        item = Dataset()
        item.add_new(0x00283002, desc_vr, desc)  # LUTDescriptor
        item.add_new(0x00283006, data_vr, data)  # LUTData
        return make_mono(name, arr, VOILUTSequence=Sequence([item]), **attrs)

    def voi_lut_reference(f):
        ds = pydicom.dcmread(f)
        bits = ds.VOILUTSequence[0].LUTDescriptor[2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "VOI LUT on a float input array": integers here
            v = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=True)
        y = np.floor(v.astype(np.float64) * 255 / ((1 << bits) - 1) + 0.5).astype(np.uint8)
        return np.repeat(y[:, :, None], 3, axis=2)

    vl = rng.integers(0, 6000, (40, 48))
    vl[0, :4] = [0, 999, 1000, 5095]
    sig = (4095 / (1 + np.exp(-(np.arange(4096) - 2048) / 400.0))).astype(int)
    f_vl = voi_lut_file("voilut.dcm", vl, "US", [4096, 1000, 12], "US", [int(v) for v in sig])
    compare("VOI LUT Sequence (US, 12 bits, first 1000) vs pydicom", f_vl, voi_lut_reference(f_vl))
    compare("VOI LUT Sequence vs dcm2pnm +Wl 1", f_vl, dcm2pnm(f_vl, ["+Wl", "1"]))
    ramp = np.linspace(0, 65535, 2048).astype("<u2")
    f_vs = voi_lut_file("voilut_ct.dcm", ct[:32, :32], "SS", [2048, -1500, 16], "OW",
                        ramp.tobytes(), signed=True, RescaleSlope="1", RescaleIntercept="-1024")
    compare("VOI LUT Sequence (SS first -1500, OW data, signed CT) vs pydicom", f_vs,
            voi_lut_reference(f_vs))
    compare("VOI LUT Sequence signed vs dcm2pnm +Wl 1", f_vs, dcm2pnm(f_vs, ["+Wl", "1"]))

    # MONOCHROME1: inverted.
    f_m1 = make_mono("mono1.dcm", cr, phot="MONOCHROME1", WindowCenter="30000",
                     WindowWidth="40000")
    got_m1 = compare("MONOCHROME1 inverted", f_m1, voi_reference(f_m1))
    compare("MONOCHROME1 vs dcm2pnm +Wi 1", f_m1, dcm2pnm(f_m1, ["+Wi", "1"]))
    got_m2 = decode(make_mono("mono1as2.dcm", cr, WindowCenter="30000", WindowWidth="40000"))[0]
    check(got_m1 is not None and got_m2 is not None and
          np.array_equal(got_m1.astype(int), 255 - got_m2.astype(int)),
          "MONOCHROME1 is exactly 255 - MONOCHROME2")

    # 8-bit MONOCHROME2, with and without a window; no window at all: min-max.
    g8 = rng.integers(0, 256, (50, 30))
    f_8 = make_mono("mono8.dcm", g8, bits_alloc=8, bits_stored=8)
    compare("8-bit MONOCHROME2, no window (min-max)", f_8, voi_reference(f_8))
    f_8w = make_mono("mono8w.dcm", g8, bits_alloc=8, bits_stored=8, WindowCenter="128",
                     WindowWidth="64")
    compare("8-bit MONOCHROME2, file window", f_8w, voi_reference(f_8w))
    f_mm = make_mono("minmax.dcm", ct, signed=True, RescaleSlope="2.5", RescaleIntercept="-7")
    got_mm = compare("signed 16-bit, slope 2.5, no window (min-max)", f_mm, voi_reference(f_mm))
    check(got_mm is not None and got_mm.min() == 0 and got_mm.max() == 255,
          "min-max window spans 0..255")
    compare("min-max vs dcm2pnm +Wm", f_mm, dcm2pnm(f_mm, ["+Wm"]))

    # RGB, planar configuration 0 and 1; YBR_FULL converted.
    rgb = rng.integers(0, 256, (24, 36, 3))
    for planar in (0, 1):
        f = make_colour("rgb%d.dcm" % planar, rgb, planar=planar)
        got, _ = decode(f)
        check(got is not None and np.array_equal(got, pydicom.dcmread(f).pixel_array),
              "RGB planar %d passed through exactly" % planar)
    f_ybr = make_colour("ybr.dcm", rgb, phot="YBR_FULL")
    ybr_ref = convert_color_space(pydicom.dcmread(f_ybr).pixel_array, "YBR_FULL", "RGB")
    compare("YBR_FULL converted to RGB (pydicom's conversion)", f_ybr, ybr_ref)
    # A request window on a colour image is refused, not ignored.
    refused("window on an RGB image", path("rgb0.dcm"), ["monochrome"],
            ["--window", "40,400"])

    # Other encodings of the same CR / CT: identical output.
    encodings = [
        ("implicit VR little endian", "dcmconv", ["+ti"]),
        ("explicit VR big endian", "dcmconv", ["+tb"]),
        ("no preamble / meta header (bare data set)", "dcmconv", ["-F", "+ti"]),
        ("JPEG-LS lossless", "dcmcjpls", []),
        ("RLE lossless", "dcmcrle", []),
        ("JPEG lossless SV1", "dcmcjpeg", ["+e1"]),
    ]
    for src, ref, label in [(f_cr, got_cr, "CR"), (f_ct, None, "CT")]:
        if ref is None:
            ref = decode(src)[0]
        for what, tool, opts in encodings:
            out = path("enc.dcm")
            dcmtk(tool, *opts, src, out)
            got, p = decode(out)
            check(got is not None and np.array_equal(got, ref),
                  "%s %s: same pixels as the original (%s)" % (label, what, p.stderr.strip()))

    # A colour JPEG wrapped by img2dcm (YBR_FULL_422 JPEG baseline): DCMTK's JPEG decoder
    # against PIL's decoding of the same JPEG.
    try:
        from PIL import Image
        grad = np.zeros((40, 56, 3), np.uint8)
        grad[..., 0] = np.arange(56)[None, :] * 4
        grad[..., 1] = np.arange(40)[:, None] * 6
        grad[..., 2] = 128
        Image.fromarray(grad).save(path("c.jpg"), quality=90)
        dcmtk("img2dcm", path("c.jpg"), path("jpeg.dcm"))
        compare("JPEG baseline YBR_FULL_422 (img2dcm) vs PIL", path("jpeg.dcm"),
                np.asarray(Image.open(path("c.jpg")).convert("RGB")))
    except ImportError:
        check(False, "python3-pil missing")

    # Deflate is refused, not inflated: a 20 MiB file could inflate to gigabytes.
    dcmtk("dcmconv", "+td", f_cr, path("deflated.dcm"))
    refused("deflated explicit VR little endian", path("deflated.dcm"),
            ["Deflated Explicit VR Little Endian", "(1.2.840.10008.1.2.1.99) is not supported"])
    # A header that claims a 4 GB element in a small file: refused, nothing allocated.
    ds = pydicom.dcmread(f_8)
    ds.add_new(0x00091010, "OB", b"\0" * 10000)  # a private element > 4 KiB, value deferred
    ds.save_as(path("bigelem.dcm"))
    b = bytearray(open(path("bigelem.dcm"), "rb").read())
    at = b.index(b"\x09\x00\x10\x10OB\0\0")
    b[at + 8:at + 12] = (0xFFFFFFF0).to_bytes(4, "little")
    open(path("bigelem.dcm"), "wb").write(bytes(b))
    _, p = decode(path("bigelem.dcm"), extra=["--max-as-mb", "1024"])
    check(p.returncode == 2 and "premature end of stream" in p.stderr
          and "memory" not in p.stderr.lower(),
          "element length 0xFFFFFFF0 in a 10 KB file under a 1 GB address space: exit %d, %r"
          % (p.returncode, p.stderr.strip()))

    # A meta header cut inside TransferSyntaxUID, whose length field claims 0xFFFFFF00 bytes:
    # refused as truncated. (DCMTK would allocate the claimed length to read the UID; the seed
    # of the same name in tests/fuzz/corpus/fuzz_dicom catches that under libFuzzer's malloc
    # limit, which an address-space limit here cannot tell from a refusal.)
    _, p = decode(big_ts("bigts.dcm", f_8), extra=["--max-as-mb", "1024"])
    check(p.returncode == 2 and "truncated or malformed" in p.stderr,
          "TransferSyntaxUID length 0xFFFFFF00 in a cut meta header: exit %d, %r"
          % (p.returncode, p.stderr.strip()))
    # A JPEG bomb: an 8 x 8 progressive JPEG whose frame header is patched to 60000 x 60000,
    # wrapped as an 8 x 8 DICOM image. libjpeg would allocate ~7 GB of coefficient buffers from
    # the frame header before DCMTK compares sizes; it is refused before decoding.
    for ts, name in [("1.2.840.10008.1.2.4.51", "JPEG Extended"),
                     ("1.2.840.10008.1.2.4.50", "JPEG Baseline")]:
        _, p = decode(jpeg_bomb("jpegbomb.dcm", ts), extra=["--max-as-mb", "1024"])
        check(p.returncode == 2 and name in p.stderr
              and "JPEG frame header is 60000 x 60000 with 1 components; Columns x Rows are "
                  "8 x 8" in p.stderr,
              "progressive JPEG frame header 60000 x 60000 in an 8 x 8 DICOM (%s) under a "
              "1 GB address space: exit %d, %r" % (ts, p.returncode, p.stderr.strip()))

    # An RLE header whose segment offset points past its fragment: DCMTK 3.6.7's RLE decoder
    # would read there (a crash under ASan); refused from our own check of the header.
    dcmtk("dcmcrle", f_8, path("rle8.dcm"))
    b = bytearray(open(path("rle8.dcm"), "rb").read())
    at = b.index(b"\x01\x00\x00\x00\x40\x00\x00\x00")  # 1 segment, at offset 64
    open(path("rle_bad.dcm"), "wb").write(bytes(b[:at + 4] + (0x7FFFFFF0).to_bytes(4, "little")
                                              + b[at + 8:]))
    refused("RLE segment offset past the fragment", path("rle_bad.dcm"),
            ["RLE Lossless: segment 1's offset 2147483632 is not within the"])
    open(path("rle_bad.dcm"), "wb").write(bytes(b[:at] + (2).to_bytes(4, "little") + b[at + 4:]))
    refused("RLE header with 2 segments for 1 x 8 bits", path("rle_bad.dcm"),
            ["RLE Lossless: the header has 2 segments; SamplesPerPixel 1 and BitsAllocated 8 "
             "need 1"])

    # Uncompressed PixelData typed OD (not OB / OW): refused by its VR, not read as doubles.
    b = bytearray(open(f_ct, "rb").read())
    at = b.index(b"\xe0\x7f\x10\x00OW")
    b[at + 4:at + 6] = b"OD"
    open(path("pix_od.dcm"), "wb").write(bytes(b))
    refused("uncompressed PixelData with VR OD", path("pix_od.dcm"),
            ["PixelData (7FE0,0010) has VR OD; uncompressed pixel data must be OB or OW"])

    # Compressed transfer syntaxes DCMTK cannot decode: refused by name.
    # (DCMTK's names: "JPEG 2000 (Lossless only)" for the standard's "JPEG 2000 Image
    # Compression (Lossless Only)".)
    refused("JPEG 2000 lossless", fake_encapsulated("j2k.dcm", "1.2.840.10008.1.2.4.90"),
            ["DICOM transfer syntax JPEG 2000 (Lossless only) (1.2.840.10008.1.2.4.90) is not "
             "supported"])
    refused("JPEG 2000", fake_encapsulated("j2k2.dcm", "1.2.840.10008.1.2.4.91"),
            ["DICOM transfer syntax JPEG 2000", "(1.2.840.10008.1.2.4.91) is not supported"])
    # HTJ2K, newer than DCMTK 3.6.7 (and pydicom 2.3, which will not write it): written under a
    # private UID of the same padded length, then the UID patched in the meta header.
    f = fake_encapsulated("htj2k.dcm", "1.2.3.4.5.6.7.8.9.10.111")
    b = open(f, "rb").read()
    open(f, "wb").write(b.replace(b"1.2.3.4.5.6.7.8.9.10.111", b"1.2.840.10008.1.2.4.201\0", 1))
    refused("HTJ2K (unknown to DCMTK)", f,
            ["DICOM transfer syntax 1.2.840.10008.1.2.4.201 is not supported"])
    refused("JPEG-LS syntax with a corrupt bitstream",
            fake_encapsulated("badjls.dcm", "1.2.840.10008.1.2.4.80"),
            ["could not be decoded", "JPEG-LS"])

    # Concurrent decodes (the coordinator's threads): same pixels / same refusal in every thread.
    for f, what, rc in [(path("jpeg.dcm"), "JPEG", 0), (f_ct, "CT", 0),
                        (path("j2k.dcm"), "refused J2K", 2)]:
        p = run([DECODE, f, path("thr.rgb"), "--threads", "8"])
        check(p.returncode == rc, "8 threads decoding %s agree (exit %d)" % (what, p.returncode))

    # Bad inputs.
    data = open(f_cr, "rb").read()
    for cut, what in [(len(data) - 1001, "in PixelData"), (300, "in the header"),
                      (140, "in the meta header")]:
        open(path("trunc.dcm"), "wb").write(data[:cut])
        refused("truncated " + what, path("trunc.dcm"), ["truncated"])
    ds = pydicom.dcmread(f_cr)
    del ds.PixelData
    ds.save_as(path("nopix.dcm"))
    refused("no PixelData", path("nopix.dcm"), ["no PixelData (7FE0,0010)"])
    ds = pydicom.dcmread(f_8)
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    ds.save_as(path("multi.dcm"))
    refused("multi-frame", path("multi.dcm"),
            ["multi-frame DICOM (3 frames) is not supported; send one frame"])
    ds = pydicom.dcmread(f_cr)
    ds.Rows = ds.Columns = 30000
    ds.save_as(path("huge.dcm"))
    refused("30000 x 30000 header (pixel limit before decoding)", path("huge.dcm"),
            ["30000 x 30000", "over the limit of 50000000"])
    refused("--max-pixels 1000 on 80 x 64", f_cr, ["80 x 64", "limit of 1000"],
            ["--max-pixels", "1000"])
    refused("--max-bytes 1000", f_cr, ["over the limit of 1000"], ["--max-bytes", "1000"])
    ds = pydicom.dcmread(f_cr)
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.save_as(path("bits32.dcm"))
    refused("BitsAllocated 32", path("bits32.dcm"), ["BitsAllocated (0028,0100) 32"])
    ds = pydicom.dcmread(f_cr)
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(path("shortpix.dcm"))
    refused("PixelData shorter than the image", path("shortpix.dcm"),
            ["PixelData (7FE0,0010) is 1000 bytes", "10240"])
    ds = pydicom.dcmread(f_cr)
    del ds.Rows
    ds.save_as(path("norows.dcm"))
    refused("Rows missing", path("norows.dcm"), ["Rows (0028,0010) is missing"])
    ds = pydicom.dcmread(path("voilut.dcm"))
    ds.VOILUTSequence[0].LUTData = ds.VOILUTSequence[0].LUTData[:100]
    ds.save_as(path("voilut_short.dcm"))
    refused("VOI LUT shorter than its descriptor", path("voilut_short.dcm"),
            ["LUTData (0028,3006)", "4096 entries"])
    refused("request window width 0", f_ct, ["width must be >= 1"], ["--window", "40,0"])
    ds = pydicom.dcmread(f_ct)
    ds.WindowWidth = "0"
    ds.save_as(path("ww0.dcm"))
    refused("file window width 0", path("ww0.dcm"), ["WindowWidth (0028,1051)", "send a window"])
    open(path("png.dcm"), "wb").write(b"\x89PNG\r\n\x1a\n" + bytes(200))
    refused("not DICOM (PNG bytes)", path("png.dcm"), ["DICOM"])
    open(path("empty.dcm"), "wb").write(b"")
    refused("empty", path("empty.dcm"), ["empty"])
    # Random garbage must never crash (exit 2 or a decoded image, nothing else).
    crashes = 0
    for i in range(40):
        b = bytearray(data[:2000])
        for _ in range(20):
            b[rng.integers(0, len(b))] = rng.integers(0, 256)
        open(path("fuzz.dcm"), "wb").write(bytes(b))
        p = run([DECODE, path("fuzz.dcm"), path("fuzz.rgb")])
        crashes += p.returncode not in (0, 2)
        if p.returncode == 2:
            print("     fuzz %d: %s" % (i, p.stderr.strip()))
    check(crashes == 0, "40 corrupted headers: no crash (%d)" % crashes)

    # Through the CLI, i.e. gs_image_prepare as the coordinator and batch mode call it.
    f_m1sq = make_mono("mono1sq.dcm", cr[:, :64], phot="MONOCHROME1", RescaleSlope="0.5",
                       RescaleIntercept="100", WindowCenter="16000", WindowWidth="20000")
    cli(f_ct, f_m1sq)

    leaks = [s for s in SECRETS for o in outputs if s in o]
    check(not leaks, "patient identifiers never in stdout/stderr (%d outputs)" % len(outputs))
    print("checks took %.1f s" % (time.time() - t0))
    if failures:
        print("%d FAILED" % len(failures))
        sys.exit(1)
    print("all DICOM checks passed")


def cli(f_ct, f_m1):
    """`gemmashard image-prep --mime application/dicom --size N [--window C,W]`: decode + resize;
    a square image at its own size is not resampled, so the reference applies as it is."""
    for f, window in [(f_ct, None), (f_ct, (-600.0, 1500.0)), (f_m1, None)]:
        n = int(pydicom.dcmread(f).Rows)
        cmd = [GEMMASHARD, "image-prep", "--mime", "application/dicom", "--size", str(n),
               "--in", f, "--out", path("cli.rgb")]
        if window:
            cmd += ["--window", "%r,%r" % window]
        p = run(cmd)
        what = "image-prep %s --window %s" % (os.path.basename(f), window)
        if p.returncode != 0:
            check(False, "%s: exit %d %s" % (what, p.returncode, p.stderr.strip()))
            continue
        got = np.fromfile(path("cli.rgb"), dtype=np.uint8).reshape(n, n, 3)
        d = np.abs(got.astype(int) - voi_reference(f, window).astype(int)).max()
        check(d <= 1, "%s: max |diff| %d (<= 1)" % (what, d))
    for f, must in [(path("multi.dcm"), "multi-frame DICOM (3 frames) is not supported"),
                    (path("j2k.dcm"), "(1.2.840.10008.1.2.4.90) is not supported"),
                    (path("trunc.dcm"), "truncated")]:
        p = run([GEMMASHARD, "image-prep", "--mime", "application/dicom", "--size", "8",
                 "--in", f, "--out", path("cli.rgb")])
        check(p.returncode == 2 and must in p.stderr,
              "image-prep refuses %s: exit %d, %r" % (os.path.basename(f), p.returncode,
                                                      p.stderr.strip()))
    # The "DICM" magic is enough without --mime.
    p = run([GEMMASHARD, "image-prep", "--size", "64", "--in", f_ct, "--out", path("cli.rgb")])
    got = np.fromfile(path("cli.rgb"), dtype=np.uint8) if p.returncode == 0 else None
    check(got is not None and np.abs(got.reshape(64, 64, 3).astype(int)
                                     - voi_reference(f_ct).astype(int)).max() <= 1,
          "image-prep sniffs DICOM without --mime (%s)" % p.stderr.strip())


def bench():
    """Time per image: a 2048 x 2500 16-bit CR and a 512 x 512 CT slice, gs_dicom_decode alone
    and gemmashard image-prep's decode + resize to 896 x 896 (means over repeats, in-process)."""
    rng = np.random.default_rng(1)
    cr = rng.integers(0, 65536, (2500, 2048))
    f_cr = make_mono("bench_cr.dcm", cr, WindowCenter="32768", WindowWidth="65536",
                     RescaleSlope="1", RescaleIntercept="0")
    ct = rng.integers(-1024, 3000, (512, 512))
    f_ct = make_mono("bench_ct.dcm", ct, signed=True, RescaleSlope="1", RescaleIntercept="-1024",
                     WindowCenter="40", WindowWidth="400", Modality="CT")
    for f, what, reps in [(f_cr, "CR 2048x2500 16-bit", 10), (f_ct, "CT 512x512 16-bit", 50)]:
        p = run([DECODE, f, path("bench.rgb"), "--repeat", str(reps)])
        check(p.returncode == 0, "bench %s decodes" % what)
        if p.returncode == 0:
            print("bench: %s: gs_dicom_decode %s ms per image (CPU %s ms), mean of %d"
                  % (what, p.stdout.split()[2], p.stdout.split()[3], reps))
        p = run([GEMMASHARD, "image-prep", "--mime", "application/dicom", "--size", "896",
                 "--in", f, "--out", path("bench896.rgb"), "--repeat", str(reps)])
        check(p.returncode == 0, "bench %s image-prep" % what)
        print("bench: %s: %s" % (what, p.stderr.strip()))


def write_seeds():
    """The libFuzzer seed corpus of tests/fuzz/fuzz_dicom (SCRATCH is the corpus directory):
    small files of each kind this decoder takes or refuses."""
    os.makedirs(SCRATCH, exist_ok=True)
    rng = np.random.default_rng(7)
    ct = rng.integers(-1024, 2000, (8, 8))
    make_mono("ct16s.dcm", ct, signed=True, RescaleSlope="1", RescaleIntercept="-1024",
              WindowCenter="40", WindowWidth="400", VOILUTFunction="LINEAR_EXACT")
    make_mono("mono1_12.dcm", rng.integers(0, 4096, (6, 10)), bits_stored=12,
              phot="MONOCHROME1")
    make_mono("mono8.dcm", rng.integers(0, 256, (5, 7)), bits_alloc=8, bits_stored=8)
    item = Dataset()
    item.add_new(0x00283002, "US", [16, 2, 8])
    item.add_new(0x00283006, "US", list(range(0, 256, 16)))
    make_mono("voilut.dcm", rng.integers(0, 30, (4, 4)), VOILUTSequence=Sequence([item]))
    make_colour("rgb1.dcm", rng.integers(0, 256, (4, 6, 3)), planar=1)
    make_colour("ybr.dcm", rng.integers(0, 256, (4, 6, 3)), phot="YBR_FULL")
    src = path("ct16s.dcm")
    for name, tool, opts in [("jpegls.dcm", "dcmcjpls", []), ("rle.dcm", "dcmcrle", []),
                             ("jpeg14.dcm", "dcmcjpeg", ["+e1"]),
                             ("deflate.dcm", "dcmconv", ["+td"]),
                             ("bigendian.dcm", "dcmconv", ["+tb"]),
                             ("dataset.dcm", "dcmconv", ["-F", "+ti"])]:
        dcmtk(tool, *opts, src, path(name))
    fake_encapsulated("j2k_fake.dcm", "1.2.840.10008.1.2.4.90")
    big_ts("bigts.dcm", path("mono8.dcm"))
    jpeg_bomb("jpegbomb.dcm", "1.2.840.10008.1.2.4.50")


if __name__ == "__main__":
    if sys.argv[4:] == ["--write-seeds"]:
        write_seeds()
        sys.exit(0)
    main()
