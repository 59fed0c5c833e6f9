"""Images on every API (issue 15 item 4): one coordinator serving a tiny-vision model ("vis", a
2-rank engine) and a text model ("txt", 1 rank), real clients.

Reference: the in-process engine (`gemmashard run --batch`, T = 1, no coordinator) on the same
messages: greedy answers and prompt token counts must be equal. The prompt token count must also
equal Hugging Face tokenizers' count of the reference Jinja template's text with the processor's
image expansion (tests/tokenizer/chat_images.py). PNG, JPEG and DICOM files are made here with
PIL and pydicom.

Checks: the openai npm client sends image data URLs (one image, two images, streamed with usage)
and gets the reference answers; python grpcio sends image bytes (Message.parts) and gets the same;
a DICOM with a request window differs from the file's window and equals the batch reference with
that window; a batch file with images runs, fails its bad-image line with the reason, and resumes
after being cut short; bad inputs, each followed by a good request: corrupt PNG, truncated JPEG,
a 30000x30000 PNG header, a non-image data URL, image/png holding text, bad base64, an http URL,
too many images, an image to the text-only model, a DICOM with an unsupported transfer syntax,
detail "high", image tokens typed as text, a system message with an image (HTTP 400 /
INVALID_ARGUMENT, each naming the problem); content and parts both set, a corrupt PNG, an image to
the text model, a window on a PNG (gRPC). No DICOM patient identifier reaches the logs.

usage: test_images.py BUILD_DIR TOKENIZER_JSON SCRATCH NODE_MODULES
"""
import base64
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tokenizer"))
from checks import check, exit_status  # noqa: E402
from cluster import Cluster  # noqa: E402

import grpc  # noqa: E402
from test_grpc import compile_protos  # noqa: E402

N_SOFT = 4  # the tiny-vision preset's mm_tokens_per_image


# ---- images --------------------------------------------------------------------------------

def png_bytes(w=37, h=23, seed=0):
    from PIL import Image
    im = Image.new("RGB", (w, h))
    im.putdata([((x * 7 + seed) % 256, (y * 11) % 256, ((x ^ y) * 5 + seed * 3) % 256) for y in range(h) for x in range(w)])
    b = io.BytesIO()
    im.save(b, "PNG")
    return b.getvalue()


def jpeg_bytes():
    from PIL import Image
    im = Image.new("RGB", (64, 48))
    im.putdata([((x * 4) % 256, (y * 5) % 256, 128) for y in range(48) for x in range(64)])
    b = io.BytesIO()
    im.save(b, "JPEG", quality=90)
    return b.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header():
    """A valid-looking PNG claiming 30000 x 30000 pixels (a decompression bomb's header)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) +
            png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + png_chunk(b"IEND", b""))


def corrupt_png():
    b = bytearray(png_bytes())
    i = b.index(b"IDAT") + 8
    for k in range(i, min(i + 40, len(b) - 16)):
        b[k] ^= 0x5A
    return bytes(b)


def dicom_bytes(transfer_syntax=None):
    """A 32 x 32 16-bit CT slice (MONOCHROME2, rescale -1024, window 40/400), explicit VR little
    endian; transfer_syntax: claim that syntax with an encapsulated (garbage) fragment instead."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^Patient"
    ds.PatientID = "SECRET-ID-4711"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    if transfer_syntax:
        from pydicom.encaps import encapsulate
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.is_little_endian, ds.is_implicit_VR = True, False
    else:
        px = bytearray()
        for y in range(32):
            for x in range(32):
                px += struct.pack("<H", 1024 - 200 + (x * 37 + y * 13) % 600)
        ds.PixelData = bytes(px)
        ds.is_little_endian, ds.is_implicit_VR = True, False
    b = io.BytesIO()
    pydicom.dcmwrite(b, ds, write_like_original=False)
    return b.getvalue()


def data_url(data, mime):
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def img_part(data, mime, **extra):
    return {"type": "image_url", "image_url": {"url": data_url(data, mime), **extra}}


def text_part(t):
    return {"type": "text", "text": t}


# ---- references ----------------------------------------------------------------------------

def batch_run(gs, model, lines, out, threads="1", check_rc=True):
    inp = out + ".in.jsonl"
    with open(inp, "w") as f:
        for r in lines:
            f.write(json.dumps(r) + "\n")
    p = subprocess.run([gs, "run", "--model", model, "--batch", inp, "--out", out, "--threads", threads],
                       capture_output=True, text=True, timeout=600)
    if check_rc and p.returncode != 0:
        raise RuntimeError(f"batch run failed: {p.stderr}")
    res = {}
    with open(out) as f:
        for line in f:
            d = json.loads(line)
            res[d["id"]] = d
    return res, p


def hf_counts(tok, node_modules, conversations, scratch):
    """Token counts of the reference template + processor expansion, by HF tokenizers."""
    import jinja2
    from chat_images import TEMPLATE
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    t = env.from_string(TEMPLATE)
    seq = "\n\n<start_of_image>" + "<image_soft_token>" * N_SOFT + "<end_of_image>\n\n"
    corpus, ref, dc, dr = (os.path.join(scratch, n) for n in ("hf.jsonl", "hf.ref.jsonl", "hf.dc.jsonl", "hf.dr.jsonl"))
    with open(corpus, "w") as f:
        for msgs in conversations:
            hf_msgs = [dict(m, content=[{"type": "image"} if p["type"] == "image_url" else p for p in m["content"]])
                       if isinstance(m["content"], list) else m for m in msgs]
            text = t.render(messages=hf_msgs, bos_token="<bos>", add_generation_prompt=True)
            f.write(json.dumps({"text": text.replace("<start_of_image>", seq)}) + "\n")
    open(dc, "w").close()
    subprocess.check_call(["node", os.path.join(HERE, "..", "tokenizer", "hf_ref.js"), tok, corpus, ref, dc, dr],
                          env=dict(os.environ, NODE_PATH=node_modules))
    return [len(json.loads(line)["ids"]) for line in open(ref)]


def post(cl, body, timeout=60):
    req = urllib.request.Request(cl.url("/v1/chat/completions"), data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def main():
    build, tok, scratch, node_modules = sys.argv[1:5]
    repo = os.path.dirname(os.path.dirname(HERE))
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    t0 = time.time()
    try:
        import jinja2  # noqa: F401
        import PIL  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as e:
        print(f"SKIPPED: {e} (deploy/install-deps.sh)")
        return 77
    for mod in ("openai", os.path.join("@anush008", "tokenizers")):
        if not shutil.which("node") or not os.path.isdir(os.path.join(node_modules, mod)):
            print(f"SKIPPED: needs node and {mod} under {node_modules} (deploy/install-deps.sh)")
            return 77
    compile_protos(repo, os.path.join(scratch, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg

    gs = os.path.join(build, "tools", "gemmashard")

    def make(name, *args):
        d = os.path.join(scratch, name)
        p = subprocess.run([gs, "make-test-model", "--out", d, "--tokenizer", tok, *args], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return d

    vis = make("vis", "--preset", "tiny-vision", "--seed", "3")
    txt = make("txt", "--preset", "tiny", "--seed", "4")
    png, jpg, dcm = png_bytes(), jpeg_bytes(), dicom_bytes()
    png2 = png_bytes(19, 41, seed=9)

    # conversations (OpenAI shape) and their batch reference
    conv = {
        "one": [{"role": "user", "content": [img_part(png, "image/png"), text_part("What is shown?")]}],
        "one_b": [{"role": "user", "content": [img_part(png2, "image/png"), text_part("What is shown?")]}],
        "two": [{"role": "system", "content": "You are a radiologist."},
                {"role": "user", "content": [text_part("Compare"), img_part(jpg, "image/jpeg"), text_part("with"),
                                             img_part(png2, "image/png")]}],
        "dcm": [{"role": "user", "content": [img_part(dcm, "application/dicom"), text_part("Findings?")]}],
        "dcm_win": [{"role": "user", "content": [img_part(dcm, "application/dicom", window={"center": -600, "width": 1500}),
                                                 text_part("Findings?")]}],
    }
    # the cluster boots (engines load) while the references are computed
    cl = Cluster(build, None, engines=2, tp=2, models=[(vis, "vis"), (txt, "txt")], engine_models=[0, 1],
                 engine_args=["--max-seqs", "4", "--threads", "1"], logdir=os.path.join(scratch, "logs"))
    try:
        cl.start_coordinator()
        cl.start_engine(0)
        cl.start_engine(1)

        # ---- the batch reference: a batch file with images; then a resume after a cut --------
        lines = [{"id": k, "messages": v, "max_tokens": 8, "temperature": 0, "logprobs": True} for k, v in conv.items()]
        lines[2:2] = [{"id": "b-bad", "messages": [{"role": "user", "content": [img_part(png[:40], "image/png")]}],
                       "max_tokens": 4},
                      {"id": "b-txt", "messages": [{"role": "user", "content": "No image."}], "max_tokens": 6,
                       "temperature": 0}]
        bout = os.path.join(scratch, "batch.out.jsonl")
        ref, _ = batch_run(gs, vis, lines, bout, threads="2")
        check(set(ref) == {b["id"] for b in lines}, f"batch with images: a record per line ({sorted(ref)})")
        bad = ref.get("b-bad", {}).get("error", {}).get("message", "")
        check("line 3" in bad and "image 0" in bad, f"batch: the truncated PNG fails its line with the reason: {bad!r}")
        recs = open(bout).read().splitlines()
        with open(bout, "w") as f:  # as if killed after two records, in the middle of the third
            f.write("\n".join(recs[:2]) + "\n" + recs[2][:25])
        resumed, p = batch_run(gs, vis, lines, bout, threads="2")
        ids = [json.loads(line)["id"] for line in open(bout).read().splitlines() if line.strip()]
        check(sorted(ids) == sorted(ref) and resumed == ref,
              f"batch resume: every id once, the same records ({len(ids)} lines; {p.stderr.strip()[-120:]!r})")

        no_img = [{"role": "user", "content": [text_part("What is shown?")]}]
        *hf, hf_no_img = hf_counts(tok, node_modules, list(conv.values()) + [no_img], scratch)
        counts = dict(zip(conv, hf))
        for k in conv:
            check(ref[k].get("usage", {}).get("prompt_tokens") == counts[k],
                  f"batch '{k}': prompt_tokens {ref[k].get('usage')} == HF tokenizers' count {counts[k]}")
        check(counts["one"] - hf_no_img == N_SOFT + 3,  # 259 for N = 256
              f"one image after 'user\\n' adds N + 3 = {N_SOFT + 3} ids, not N + 4 (the newlines merge): "
              f"{counts['one']} - {hf_no_img}")
        check(ref["dcm"]["text"] != ref["dcm_win"]["text"] or ref["dcm"]["logprobs"] != ref["dcm_win"]["logprobs"],
              "batch: a DICOM with a request window answers differently from the file's window")

        # ---- the cluster -------------------------------------------------------------------
        cl.wait_healthy(2)
        t_up = time.time()

        # openai npm client
        cases = {"chat": conv["one"], "two": conv["two"],
                 "http_url": [{"role": "user", "content": [
                     {"type": "image_url", "image_url": {"url": "https://example.org/x.png"}}, text_part("What is it?")]}]}
        cpath = os.path.join(scratch, "cases.json")
        with open(cpath, "w") as f:
            json.dump(cases, f)
        p = subprocess.run(["node", os.path.join(HERE, "openai_images.mjs"), node_modules, cl.url("/v1"), "vis", cpath],
                           capture_output=True, text=True, timeout=120)
        check(p.returncode == 0, f"openai client ran (rc {p.returncode}) {p.stderr.strip()[-300:]}")
        o = json.loads(p.stdout) if p.returncode == 0 else {}
        c = o.get("chat", {})
        check(c.get("text") == ref["one"]["text"] and c.get("usage", {}).get("prompt_tokens") == counts["one"],
              f"openai client, one image: {c.get('text')!r} == reference {ref['one']['text']!r}, "
              f"usage.prompt_tokens {c.get('usage', {}).get('prompt_tokens')} == HF count {counts['one']}")
        s = o.get("chat_stream", {})
        check(s.get("text") == ref["one"]["text"] and (s.get("usage") or {}).get("prompt_tokens") == counts["one"],
              f"openai client, streamed: {s.get('text')!r}, usage {s.get('usage')}")
        # the system message makes "two" start differently: compare with its own reference
        t2 = o.get("two", {})
        check(t2.get("usage", {}).get("prompt_tokens") == counts["two"] and t2.get("text") == ref["two"]["text"],
              f"openai client, two images: {t2.get('text')!r} == {ref['two']['text']!r}, prompt_tokens "
              f"{t2.get('usage', {}).get('prompt_tokens')} == {counts['two']}")
        e = o.get("err_http_url", {})
        check(e.get("status") == 400 and "data URL" in (e.get("message") or "") and "fetches nothing" in e.get("message", ""),
              f"openai client, an https URL -> 400: {e.get('message')!r}")
        check(o.get("after_error") == ref["one"]["text"], "openai client: the next request is served")

        # HTTP: DICOM with and without a window, logprobs equal to the batch reference's
        for k in ("dcm", "dcm_win"):
            st, body = post(cl, {"model": "vis", "messages": conv[k], "max_tokens": 8, "temperature": 0, "logprobs": True})
            got = body.get("choices", [{}])[0].get("message", {}).get("content") if st == 200 else body
            check(st == 200 and got == ref[k]["text"] and body["usage"]["prompt_tokens"] == counts[k],
                  f"HTTP {k}: {st} {got!r} == reference {ref[k]['text']!r}")

        # the same text with another image after "one" (prefix cache on): its own answer, not a cached one;
        # n = 2 greedy choices with an image: both the reference
        st, body = post(cl, {"model": "vis", "messages": conv["one_b"], "max_tokens": 8, "temperature": 0})
        got = body["choices"][0]["message"]["content"] if st == 200 else body
        check(st == 200 and got == ref["one_b"]["text"] and ref["one_b"]["text"] != ref["one"]["text"],
              f"HTTP another image, same text: {got!r} == its reference {ref['one_b']['text']!r}")
        st, body = post(cl, {"model": "vis", "messages": conv["one"], "max_tokens": 8, "temperature": 0, "n": 2})
        got = [c["message"]["content"] for c in body.get("choices", [])]
        check(st == 200 and got == [ref["one"]["text"]] * 2 and body["usage"]["prompt_tokens"] == counts["one"],
              f"HTTP n = 2 with an image: {st} {got}")

        # gRPC: image bytes in Message.parts
        stub = pbg.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}"))

        def grpc_gen(parts=None, content=None, model="vis", role="user"):
            m = pb.Message(role=role)
            if content is not None:
                m.content = content
            for kind, v in parts or []:
                if kind == "text":
                    m.parts.add(text=v)
                else:
                    data, mime, win = v
                    im = m.parts.add().image
                    im.data, im.mime_type = data, mime
                    if win:
                        im.window_center, im.window_width = win
            req = pb.GenerateRequest(model=model, messages=pb.Messages(messages=[m]), max_tokens=8, temperature=0)
            try:
                r = stub.Generate(req, timeout=60)
                return None, r
            except grpc.RpcError as ex:
                return ex, None

        ex, r = grpc_gen([("image", (png, "image/png", None)), ("text", "What is shown?")])
        check(ex is None and r.text == ref["one"]["text"] and r.usage.prompt_tokens == counts["one"],
              f"gRPC image bytes: {ex.details() if ex else (r.text, r.usage.prompt_tokens)} == reference")
        ex, r = grpc_gen([("image", (dcm, "application/dicom", (-600, 1500))), ("text", "Findings?")])
        check(ex is None and r.text == ref["dcm_win"]["text"], f"gRPC DICOM with a window: {ex.details() if ex else r.text!r}")
        ex, r = grpc_gen([("image", (png, "", None)), ("text", "What is shown?")])
        check(ex is None and r.text == ref["one"]["text"], "gRPC image without a MIME type: sniffed")

        def grpc_bad(what, want, **kw):
            ex, _ = grpc_gen(**kw)
            check(ex is not None and ex.code() == grpc.StatusCode.INVALID_ARGUMENT and want in ex.details(),
                  f"gRPC {what} -> {ex.code().name if ex else 'OK'}: {ex.details() if ex else ''}")
            ex, r = grpc_gen(content="Hi", model="vis")
            check(ex is None, "  then a good gRPC request is served")

        grpc_bad("content and parts", "not both", content="x", parts=[("text", "y")])
        grpc_bad("corrupt PNG", "image 0", parts=[("image", (corrupt_png(), "image/png", None))])
        grpc_bad("image to the text model", "does not take images", model="txt",
                 parts=[("image", (png, "image/png", None))])
        grpc_bad("window on a PNG", "image 0", parts=[("image", (png, "image/png", (40, 400)))])

        # images are decoded on their own threads, not the completion-queue thread: 8 concurrent image
        # calls, one big image cancelled while it decodes, and a ModelInfo between them all answer
        def req_of(parts):
            m = pb.Message(role="user")
            for kind, v in parts:
                if kind == "text":
                    m.parts.add(text=v)
                else:
                    im = m.parts.add().image
                    im.data, im.mime_type = v
            return pb.GenerateRequest(model="vis", messages=pb.Messages(messages=[m]), max_tokens=8, temperature=0)

        big = png_bytes(1400, 1400, seed=3)
        doomed = stub.Generate.future(req_of([("image", (big, "image/png")), ("text", "What is shown?")]), timeout=60)
        futs = [stub.Generate.future(req_of([("image", (png, "image/png")), ("text", "What is shown?")]), timeout=60)
                for _ in range(8)]
        doomed.cancel()
        info = stub.ModelInfo(pb.ModelInfoRequest(model="vis"), timeout=30)
        texts = []
        for f in futs:
            try:
                texts.append(f.result().text)
            except grpc.RpcError as ex:
                texts.append(f"error {ex.code().name}: {ex.details()}")
        check(all(t == ref["one"]["text"] for t in texts) and len(info.models) == 2,
              f"8 concurrent gRPC image calls == reference, a ModelInfo answered beside them: {set(texts)}")
        check(doomed.cancelled() or doomed.done(), "a cancelled image call ends")
        ex, r = grpc_gen([("image", (png, "image/png", None)), ("text", "What is shown?")])
        check(ex is None and r.text == ref["one"]["text"], "  then a gRPC image call is served")

        # HTTP bad inputs, each followed by a good request
        good = {"model": "vis", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}

        def bad_http(what, content, want, model="vis", extra_msgs=()):
            st, body = post(cl, {"model": model, "messages": [*extra_msgs, {"role": "user", "content": content}],
                                 "max_tokens": 4})
            msg = body.get("error", {}).get("message", "")
            check(st == 400 and want in msg, f"HTTP {what} -> {st}: {msg[:200]!r}")
            st, _ = post(cl, good)
            check(st == 200, f"  then a good request -> {st}")

        tiny = png_bytes(5, 5)
        bad_http("corrupt PNG", [img_part(corrupt_png(), "image/png")], "image 0")
        bad_http("truncated JPEG", [img_part(jpg[:len(jpg) // 2], "image/jpeg")], "image 0")
        bad_http("30000x30000 PNG header", [img_part(huge_png_header(), "image/png")], "30000")
        bad_http("non-image data URL", [{"type": "image_url", "image_url": {"url": data_url(b"hello", "text/plain")}}],
                 "\"text/plain\" are not supported")
        bad_http("image/png holding text", [img_part(b"hello, not an image at all", "image/png")], "image 0")
        bad_http("bad base64", [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR%w0K"}}],
                 "invalid base64")
        bad_http("http URL", [{"type": "image_url", "image_url": {"url": "http://example.org/a.png"}}],
                 "send the image inline as a data URL")
        bad_http("too many images", [img_part(tiny, "image/png")] * 5, "more than the limit of 4")
        bad_http("image to the text-only model", [img_part(tiny, "image/png")], "does not take images", model="txt")
        bad_http("DICOM with JPEG 2000 transfer syntax",
                 [img_part(dicom_bytes("1.2.840.10008.1.2.4.90"), "application/dicom")], "JPEG 2000")
        bad_http("detail high", [img_part(tiny, "image/png", detail="high")], "only \"auto\"")
        bad_http("a typed <start_of_image>", [img_part(tiny, "image/png"), text_part("<start_of_image>")],
                 "markers for 1 images")
        bad_http("a typed <image_soft_token>", [img_part(tiny, "image/png"), text_part("<image_soft_token>")],
                 "send images only as image parts")
        st, body = post(cl, {"model": "vis", "messages": [{"role": "system", "content": [img_part(tiny, "image/png")]},
                                                          {"role": "user", "content": "Hi"}], "max_tokens": 2})
        check(st == 400 and "system" in body.get("error", {}).get("message", ""),
              f"HTTP image in a system message -> {st}: {body.get('error', {}).get('message', '')[:160]!r}")
        logs = cl.log("coordinator") if hasattr(cl, "log") else ""
        check("SECRET-ID-4711" not in logs and "Test^Patient" not in logs, "no DICOM patient identifiers in the log")
        print(f"cluster part: {time.time() - t_up:.1f} s")
    finally:
        cl.__exit__(None, None, None)
    check(cl.coord_rc == 0, f"coordinator exited cleanly ({cl.coord_rc})")
    print(f"total {time.time() - t0:.1f} s")
    return exit_status(lambda: cl.log("coordinator"))


if __name__ == "__main__":
    sys.exit(main())
