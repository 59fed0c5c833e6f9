// DICOM -> 8-bit RGB through DCMTK (contract: core/gs_dicom.h).
//
// DCMTK parses the file from memory (no temporary file ever holds patient data) and decodes the
// one frame (uncompressed, or through its registered JPEG / JPEG-LS / RLE decoders). The grey
// pipeline is ours, one 2^BitsStored-entry table from stored value to output byte:
//   stored value -> sign extension -> Modality LUT (Rescale Slope / Intercept)
//   -> VOI LUT function of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID) or the file's VOI
//      LUT table, to 0..255 -> MONOCHROME1 inverted.
// No value of the header reaches a message: attributes are named by keyword and tag.

extern "C" {
#include "gs_image.h"
#include "gs_status.h"
}
#include "gs_dicom.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcdict.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcistrmb.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmdata/dccodec.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/oflog/oflog.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

namespace {

// Once per process: DCMTK's logger off (its messages can quote tag values), decoders registered.
struct dicom_runtime {
	bool dict_loaded;
	dicom_runtime()
	{
		OFLog::configure(OFLogger::OFF_LOG_LEVEL);
		DcmRLEDecoderRegistration::registerCodecs();
		DJDecoderRegistration::registerCodecs();   // JPEG baseline, extended, lossless
		DJLSDecoderRegistration::registerCodecs(); // JPEG-LS lossless and near-lossless
		dict_loaded = dcmDataDict.isDictionaryLoaded();
	}
};

const dicom_runtime &runtime()
{
	static const dicom_runtime rt; // C++11: initialised once, thread-safe
	return rt;
}

// DICOM bytes in memory, read by DCMTK. Unlike DcmInputBufferStream it hands DCMTK a stream
// factory, as a file stream does: a value longer than the read limit is skipped (DCMTK checks
// it against the bytes left) and loaded only when used, so a header that claims a 4 GB element
// allocates nothing. Deflate is refused before it starts (a 20 MiB deflated file can inflate
// to gigabytes, and every byte would be held in memory).
class mem_stream : public DcmInputBufferStream {
public:
	mem_stream(const void *data, size_t n, offile_off_t start) : data_(data), n_(n)
	{
		setBuffer(data, (offile_off_t)n);
		setEos();
		if (start > 0)
			skip(start);
	}
	DcmInputStreamFactory *newFactory() const override;
	OFCondition installCompressionFilter(E_StreamCompression) override
	{
		return EC_UnsupportedEncoding;
	}

private:
	const void *data_;
	size_t n_;
};

class mem_factory : public DcmInputStreamFactory {
public:
	mem_factory(const void *data, size_t n, offile_off_t pos) : data_(data), n_(n), pos_(pos) {}
	DcmInputStream *create() const override { return new mem_stream(data_, n_, pos_); }
	DcmInputStreamFactory *clone() const override { return new mem_factory(*this); }
	DcmInputStreamFactoryType ident() const override { return DFT_DcmInputFileStreamFactory; }

private:
	const void *data_;
	size_t n_;
	offile_off_t pos_;
};

DcmInputStreamFactory *mem_stream::newFactory() const
{
	return new mem_factory(data_, n_, tell());
}

enum gs_status bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
enum gs_status bad(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return gs_errorf(GS_ERR_INVALID_ARG, "%s", msg);
}

// A technical code string (UID, CS) fit for a message: only [0-9A-Z._ ], else a placeholder.
// Corrupt files can put anything there, and nothing of the header is quoted beyond these.
const char *safe(const OFString &v)
{
	if (v.empty() || v.size() > 64)
		return "(invalid value)";
	for (char ch : v)
		if (!((ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z') || ch == '.' || ch == '_' ||
		      ch == ' '))
			return "(invalid value)";
	return v.c_str();
}

// A required US attribute; false (with the message recorded) when missing.
bool get_us(DcmItem *ds, const DcmTagKey &tag, const char *name, Uint16 *v, enum gs_status *st)
{
	if (ds->findAndGetUint16(tag, *v).good())
		return true;
	*st = bad("DICOM attribute %s (%04X,%04X) is missing", name, tag.getGroup(), tag.getElement());
	return false;
}

// First value of a DS attribute; false when absent. Sets *st when present but not a number.
bool get_ds(DcmItem *ds, const DcmTagKey &tag, const char *name, double *v, enum gs_status *st)
{
	Float64 x;
	if (!ds->tagExistsWithValue(tag))
		return false;
	if (ds->findAndGetFloat64(tag, x, 0).bad() || !std::isfinite(x)) {
		*st = bad("DICOM attribute %s (%04X,%04X) is not a finite decimal number", name,
			  tag.getGroup(), tag.getElement());
		return false;
	}
	*v = x;
	return true;
}

enum voi_fn { VOI_LINEAR, VOI_LINEAR_EXACT, VOI_SIGMOID };

// PS3.3 C.11.2.1.2.1 / .2 / C.11.2.1.3.1 with y in [0, 255], rounded to nearest.
uint8_t voi_apply(double x, double c, double w, enum voi_fn fn)
{
	double y;
	switch (fn) {
	case VOI_LINEAR:
		if (x <= c - 0.5 - (w - 1) / 2)
			y = 0;
		else if (x > c - 0.5 + (w - 1) / 2)
			y = 255;
		else
			y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255;
		break;
	case VOI_LINEAR_EXACT:
		if (x <= c - w / 2)
			y = 0;
		else if (x > c + w / 2)
			y = 255;
		else
			y = ((x - c) / w + 0.5) * 255;
		break;
	default:
		y = 255 / (1 + std::exp(-4 * (x - c) / w));
		break;
	}
	y = std::floor(y + 0.5);
	return (uint8_t)(y < 0 ? 0 : y > 255 ? 255 : y);
}

struct pixel_layout {
	Uint16 rows, cols, spp, bits_alloc, bits_stored, high_bit, pixel_rep, planar;
	OFString photometric;
};

// The first item of a VOI LUT Sequence (PS3.3 C.11.2.1.1): entries[clamp(x - first)] scaled from
// `bits` to 0..255.
struct voi_table {
	std::vector<uint16_t> entries;
	int64_t first;
	uint32_t bits;
};

enum gs_status read_voi_table(DcmItem *ds, bool signed_input, voi_table *t)
{
	DcmItem *item = NULL;
	DcmElement *desc = NULL;
	if (ds->findAndGetSequenceItem(DCM_VOILUTSequence, item, 0).bad() || !item)
		return bad("DICOM VOI LUT Sequence (0028,3010) has no item");
	if (item->findAndGetElement(DCM_LUTDescriptor, desc).bad() || !desc || desc->getVM() != 3)
		return bad("DICOM VOI LUT Sequence (0028,3010): LUTDescriptor (0028,3002) is missing or "
			   "has not 3 values");
	const bool ss = desc->getVR() == EVR_SS;
	Uint16 d[3];
	for (unsigned long k = 0; k < 3; k++) {
		Sint16 v = 0;
		if ((ss ? desc->getSint16(v, k) : desc->getUint16(d[k], k)).bad())
			return bad("DICOM VOI LUT Sequence: LUTDescriptor (0028,3002) is not 16-bit");
		if (ss)
			d[k] = (Uint16)v;
	}
	// The first mapped value is signed when its VR says so, or when the input can be negative.
	const uint32_t n = d[0] ? d[0] : 65536u;
	t->first = ss || signed_input ? (int64_t)(Sint16)d[1] : (int64_t)d[1];
	t->bits = d[2];
	if (t->bits < 8 || t->bits > 16)
		return bad("DICOM VOI LUT Sequence: %u bits per entry is not supported (8..16)", t->bits);
	const Uint16 *data = NULL;
	unsigned long count = 0;
	if (item->findAndGetUint16Array(DCM_LUTData, data, &count).bad() || !data || count < n)
		return bad("DICOM VOI LUT Sequence: LUTData (0028,3006) is missing or shorter than its "
			   "LUTDescriptor's %u entries", n);
	t->entries.assign(data, data + n);
	return GS_OK;
}

// Grey: table from stored value (BitsStored bits) to output byte, then one lookup per pixel.
enum gs_status decode_grey(DcmItem *ds, const pixel_layout &L, const OFString &cm,
			   const uint8_t *frame, const struct gs_image_opts *o, uint8_t *rgb)
{
	enum gs_status st = GS_OK;
	const uint32_t nvals = 1u << L.bits_stored;
	const uint32_t mask = nvals - 1, shift = L.high_bit + 1 - L.bits_stored;
	const size_t npx = (size_t)L.rows * L.cols;

	if (ds->tagExists(DCM_ModalityLUTSequence))
		return bad("DICOM Modality LUT Sequence (0028,3000) is not supported");
	double slope = 1, intercept = 0;
	bool has_slope = get_ds(ds, DCM_RescaleSlope, "RescaleSlope", &slope, &st);
	if (st != GS_OK)
		return st;
	bool has_icept = get_ds(ds, DCM_RescaleIntercept, "RescaleIntercept", &intercept, &st);
	if (st != GS_OK)
		return st;
	if (has_slope != has_icept)
		return bad("DICOM RescaleSlope (0028,1053) and RescaleIntercept (0028,1052) must come "
			   "together");

	// Stored value of pixel i (an index into the table), and its modality value.
	auto stored = [&](size_t i) -> uint32_t {
		uint32_t w = L.bits_alloc == 8 ? frame[i] : ((const uint16_t *)(const void *)frame)[i];
		return (w >> shift) & mask;
	};
	auto modality = [&](uint32_t s) -> double {
		int64_t v = (L.pixel_rep == 1 && (s & (nvals >> 1))) ? (int64_t)s - nvals : (int64_t)s;
		return (double)v * slope + intercept;
	};

	double c = 0, w = 0;
	enum voi_fn fn = VOI_LINEAR;
	voi_table table = {};
	if (o && o->has_window) {
		c = o->window_center;
		w = o->window_width;
		if (!std::isfinite(c) || !std::isfinite(w) || w < 1)
			return bad("DICOM window: center %g width %g: the width must be >= 1", c, w);
	} else if (ds->tagExistsWithValue(DCM_WindowCenter) || ds->tagExistsWithValue(DCM_WindowWidth)) {
		if (!get_ds(ds, DCM_WindowCenter, "WindowCenter", &c, &st) ||
		    !get_ds(ds, DCM_WindowWidth, "WindowWidth", &w, &st))
			return st != GS_OK ? st
					   : bad("DICOM WindowCenter (0028,1050) and WindowWidth "
						 "(0028,1051) must come together");
		OFString f;
		if (ds->findAndGetOFString(DCM_VOILUTFunction, f).good() && !f.empty()) {
			if (f == "LINEAR_EXACT")
				fn = VOI_LINEAR_EXACT;
			else if (f == "SIGMOID")
				fn = VOI_SIGMOID;
			else if (f != "LINEAR")
				return bad("DICOM VOI LUT Function (0028,1056) %s is not supported "
					   "(LINEAR, LINEAR_EXACT, SIGMOID)", safe(f));
		}
		if (fn == VOI_LINEAR ? w < 1 : w <= 0)
			return bad("DICOM file's WindowWidth (0028,1051) is %g, not a valid width; "
				   "send a window (center, width) with the image", w);
	} else if (ds->tagExists(DCM_VOILUTSequence)) {
		const bool signed_input = L.pixel_rep == 1 || slope < 0 || intercept < 0;
		if ((st = read_voi_table(ds, signed_input, &table)) != GS_OK)
			return st;
	} else {
		// Min-max over the image: LINEAR_EXACT mapping [min, max] onto [0, 255].
		double lo = INFINITY, hi = -INFINITY;
		std::vector<uint8_t> seen(nvals, 0);
		for (size_t i = 0; i < npx; i++)
			seen[stored(i)] = 1;
		for (uint32_t s = 0; s < nvals; s++) {
			if (!seen[s])
				continue;
			double m = modality(s);
			lo = m < lo ? m : lo;
			hi = m > hi ? m : hi;
		}
		c = (lo + hi) / 2;
		w = hi - lo;
		fn = VOI_LINEAR_EXACT;
	}

	std::vector<uint8_t> lut(nvals);
	const bool invert = cm == "MONOCHROME1";
	const double table_max = (double)((1u << table.bits) - 1);
	for (uint32_t s = 0; s < nvals; s++) {
		uint8_t y;
		if (!table.entries.empty()) { // VOI LUT: inputs below / above its range clamp
			double x = std::floor(modality(s)) - (double)table.first;
			size_t k = x <= 0 ? 0 : x >= (double)table.entries.size() - 1
						  ? table.entries.size() - 1 : (size_t)x;
			double v = (table.entries[k] & (uint32_t)table_max) * 255.0 / table_max;
			y = (uint8_t)std::floor(v + 0.5);
		} else {
			y = w > 0 ? voi_apply(modality(s), c, w, fn) : 0; // w == 0: a flat image
		}
		lut[s] = invert ? (uint8_t)(255 - y) : y;
	}
	const uint8_t *t = lut.data();
	if (L.bits_alloc == 8) {
		for (size_t i = 0; i < npx; i++)
			memset(rgb + 3 * i, t[(frame[i] >> shift) & mask], 3);
	} else {
		const uint16_t *f16 = (const uint16_t *)(const void *)frame;
		for (size_t i = 0; i < npx; i++)
			memset(rgb + 3 * i, t[(f16[i] >> shift) & mask], 3);
	}
	return GS_OK;
}

// 8-bit colour: RGB passed through (planar configuration 0 or 1), YBR_FULL converted.
enum gs_status decode_colour(const pixel_layout &L, const OFString &cm, const uint8_t *frame,
			     const struct gs_image_opts *o, uint8_t *rgb)
{
	const size_t npx = (size_t)L.rows * L.cols;
	if (o && o->has_window)
		return bad("a DICOM window applies to monochrome images only; this one is %s",
			   safe(cm));
	const bool ybr = cm == "YBR_FULL";
	for (size_t i = 0; i < npx; i++) {
		uint8_t p[3];
		for (int k = 0; k < 3; k++)
			p[k] = L.planar ? frame[k * npx + i] : frame[3 * i + k];
		if (ybr) { // PS3.3 C.7.6.3.1.2
			double y = p[0], cb = p[1] - 128.0, cr = p[2] - 128.0;
			double v[3] = { y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr,
					y + 1.772 * cb };
			for (int k = 0; k < 3; k++) {
				double r = std::floor(v[k] + 0.5);
				p[k] = (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
			}
		}
		memcpy(rgb + 3 * i, p, 3);
	}
	return GS_OK;
}

// The encapsulated PixelData's fragments (item 0, the Basic Offset Table, and at least one
// more), or NULL.
DcmPixelSequence *pixel_sequence(DcmElement *pix, E_TransferSyntax xfer)
{
	DcmPixelData *pd = dynamic_cast<DcmPixelData *>(pix); // a PixelData with VR OD is not one
	DcmPixelSequence *seq = NULL;
	if (!pd || pd->getEncapsulatedRepresentation(xfer, NULL, seq).bad() || !seq ||
	    seq->card() < 2)
		return NULL;
	return seq;
}

// An RLE frame (PS3.5 Annex G) whose header DCMTK can trust: DCMTK 3.6.7's decoder reads the
// 64-byte header and the segments at the offsets it gives without comparing them with the
// fragment's length. One frame is one fragment (PS3.5 A.4.2); its header holds the number of
// segments (one per byte of each sample) and their offsets, the first 64, the others
// increasing, none past the fragment.
enum gs_status check_rle_frame(DcmElement *pix, E_TransferSyntax xfer, const pixel_layout &L)
{
	DcmPixelSequence *seq = pixel_sequence(pix, xfer);
	DcmPixelItem *item = NULL;
	Uint8 *b = NULL;
	if (!seq || seq->card() != 2 || seq->getItem(item, 1).bad() || !item)
		return bad("DICOM pixel data could not be decoded (RLE Lossless: one frame must be one "
			   "fragment after the offset table)");
	const Uint32 len = item->getLength();
	if (len < 64 || item->getUint8Array(b).bad() || !b)
		return bad("DICOM pixel data could not be decoded (RLE Lossless: the fragment is %lu "
			   "bytes, shorter than the 64-byte RLE header)", (unsigned long)len);
	uint32_t h[16];
	for (int i = 0; i < 16; i++)
		h[i] = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 | (uint32_t)b[4 * i + 2] << 16 |
		       (uint32_t)b[4 * i + 3] << 24;
	const uint32_t segs = (uint32_t)L.spp * (L.bits_alloc / 8);
	if (h[0] != segs)
		return bad("DICOM pixel data could not be decoded (RLE Lossless: the header has %lu "
			   "segments; SamplesPerPixel %u and BitsAllocated %u need %lu)",
			   (unsigned long)h[0], L.spp, L.bits_alloc, (unsigned long)segs);
	for (uint32_t i = 1; i <= segs; i++)
		if (h[i] > len || (i == 1 ? h[i] != 64 : h[i] < h[i - 1]))
			return bad("DICOM pixel data could not be decoded (RLE Lossless: segment %lu's "
				   "offset %lu is not within the %lu-byte fragment after the previous one)",
				   (unsigned long)i, (unsigned long)h[i], (unsigned long)len);
	return GS_OK;
}

// The JPEG / JPEG-LS frame header (SOFn) of the frame's bitstream must describe the image the
// DICOM attributes describe. DCMTK hands the stream to IJG libjpeg before comparing sizes, and
// libjpeg allocates from the frame header: a progressive JPEG claiming 60000 x 60000 pixels
// in a few hundred bytes would take gigabytes of coefficient buffers.
enum gs_status check_jpeg_frame(DcmElement *pix, E_TransferSyntax xfer, const pixel_layout &L)
{
	const char *ts = DcmXfer(xfer).getXferName();
	DcmPixelSequence *seq = pixel_sequence(pix, xfer);
	if (!seq)
		return bad("DICOM pixel data could not be decoded (%s: PixelData (7FE0,0010) has no "
			   "fragment after its offset table)", ts);
	std::vector<uint8_t> s; // the frame's fragments (item 0 is the offset table)
	for (unsigned long i = 1; i < seq->card(); i++) {
		DcmPixelItem *item = NULL;
		Uint8 *b = NULL;
		if (seq->getItem(item, i).bad() || !item)
			return bad("DICOM pixel data could not be decoded (%s: fragment %lu is unreadable)",
				   ts, i);
		if (item->getLength() == 0)
			continue;
		if (item->getUint8Array(b).bad() || !b)
			return bad("DICOM pixel data could not be decoded (%s: fragment %lu is unreadable)",
				   ts, i);
		s.insert(s.end(), b, b + item->getLength());
	}
	if (s.size() < 2 || s[0] != 0xFF || s[1] != 0xD8)
		return bad("DICOM pixel data could not be decoded (%s: the bitstream does not start "
			   "with a JPEG SOI marker)", ts);
	size_t p = 2;
	while (p < s.size() && s[p] == 0xFF) { // a marker: 0xFF, fill bytes 0xFF, its code
		while (p < s.size() && s[p] == 0xFF)
			p++;
		if (p >= s.size())
			break;
		const unsigned m = s[p++];
		if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) // no length
			continue;
		if (m == 0xD9 || m == 0xDA || p + 2 > s.size())
			break; // EOI or SOS before a frame header
		const size_t len = (size_t)s[p] << 8 | s[p + 1];
		const bool sof = (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) ||
				 m == 0xF7; // SOF0..15 (not DHT, JPG, DAC), SOF55 (JPEG-LS)
		if (sof) {
			if (len < 8 || p + 8 > s.size())
				break;
			const unsigned y = (unsigned)s[p + 3] << 8 | s[p + 4];
			const unsigned x = (unsigned)s[p + 5] << 8 | s[p + 6], nf = s[p + 7];
			if (y != L.rows || x != L.cols || nf != L.spp)
				return bad("DICOM pixel data could not be decoded (%s: the JPEG frame "
					   "header is %u x %u with %u components; Columns x Rows are %u x %u, "
					   "SamplesPerPixel %u)", ts, x, y, nf, L.cols, L.rows, L.spp);
			return GS_OK;
		}
		if (len < 2)
			break;
		p += len;
	}
	return bad("DICOM pixel data could not be decoded (%s: no JPEG frame header before the "
		  "scan data)", ts);
}

enum gs_status decode(const void *data, size_t n, const struct gs_image_opts *o,
		      struct gs_image_rgb8 *out)
{
	enum gs_status st = GS_OK;
	const size_t max_bytes = o && o->max_bytes ? o->max_bytes : (size_t)GS_IMAGE_MAX_BYTES;
	const int64_t max_pixels = o && o->max_pixels > 0 ? o->max_pixels : (int64_t)GS_IMAGE_MAX_PIXELS;

	if (n == 0 || !data)
		return bad("DICOM data is empty");
	if (n > max_bytes)
		return bad("DICOM data is %zu bytes, over the limit of %zu", n, max_bytes);
	if (!runtime().dict_loaded)
		return gs_errorf(GS_ERR_INTERNAL, "DCMTK's DICOM data dictionary is not loaded "
				 "(dcmtk's dicom.dic; DCMDICTPATH)");

	// Parse from memory; values over DCM_MaxReadLength (4 KiB) stay in `data` until used.
	mem_stream in(data, n, 0);
	DcmFileFormat ff;
	ff.transferInit();
	OFCondition rc = ff.read(in, EXS_Unknown, EGL_noChange, DCM_MaxReadLength);
	ff.transferEnd();

	// The transfer syntax first: a file we cannot decode is refused by name even when its
	// compressed data set does not parse.
	// Its value is read only when its length field can be a UID's: a truncated meta header can
	// leave the element with a declared length of gigabytes, which DCMTK would allocate before
	// finding that the bytes are not there (its getLength() of a string loads the value too).
	OFString ts_uid;
	DcmElement *ts_el = NULL;
	if (ff.getMetaInfo()->findAndGetElement(DCM_TransferSyntaxUID, ts_el).good() && ts_el) {
		if (ts_el->getLengthField() > 64)
			return rc.bad() ? bad("DICOM data is truncated or malformed (%s)", rc.text())
					: bad("DICOM attribute TransferSyntaxUID (0002,0010) is %lu bytes "
					      "long; a UID has at most 64", (unsigned long)ts_el->getLengthField());
		ts_el->getOFStringArray(ts_uid);
	}
	DcmDataset *ds = ff.getDataset();
	E_TransferSyntax xfer = ts_uid.empty() ? ds->getOriginalXfer() : DcmXfer(ts_uid.c_str()).getXfer();
	if (!ts_uid.empty() && xfer == EXS_Unknown)
		return bad("DICOM transfer syntax %s is not supported (unknown to DCMTK)", safe(ts_uid));
	DcmXfer xf(xfer);
	if (xf.getStreamCompression() != ESC_none)
		return bad("DICOM transfer syntax %s (%s) is not supported: send it uncompressed",
			   xf.getXferName(), xf.getXferID());
	if (rc.bad())
		return bad("DICOM data is truncated or malformed (%s)", rc.text());
	if (xf.isReferenced() ||
	    (xf.isEncapsulated() && !DcmCodecList::canChangeCoding(xfer, EXS_LittleEndianExplicit)))
		return bad("DICOM transfer syntax %s (%s) is not supported", xf.getXferName(),
			   xf.getXferID());

	// The image's layout, checked before any pixel is decoded.
	DcmElement *pix = NULL;
	if (ds->findAndGetElement(DCM_PixelData, pix).bad() || !pix) {
		if (ds->tagExists(DCM_FloatPixelData) || ds->tagExists(DCM_DoubleFloatPixelData))
			return bad("DICOM float pixel data is not supported");
		return bad("DICOM data has no PixelData (7FE0,0010): not an image");
	}
	Sint32 frames = 1;
	if (ds->tagExistsWithValue(DCM_NumberOfFrames) &&
	    ds->findAndGetSint32(DCM_NumberOfFrames, frames).bad())
		return bad("DICOM attribute NumberOfFrames (0028,0008) is not an integer");
	if (frames > 1)
		return bad("multi-frame DICOM (%d frames) is not supported; send one frame", (int)frames);
	if (frames < 1)
		return bad("DICOM attribute NumberOfFrames (0028,0008) is %d", (int)frames);

	pixel_layout L = {};
	if (!get_us(ds, DCM_Rows, "Rows", &L.rows, &st) ||
	    !get_us(ds, DCM_Columns, "Columns", &L.cols, &st) ||
	    !get_us(ds, DCM_SamplesPerPixel, "SamplesPerPixel", &L.spp, &st) ||
	    !get_us(ds, DCM_BitsAllocated, "BitsAllocated", &L.bits_alloc, &st) ||
	    !get_us(ds, DCM_BitsStored, "BitsStored", &L.bits_stored, &st) ||
	    !get_us(ds, DCM_HighBit, "HighBit", &L.high_bit, &st) ||
	    !get_us(ds, DCM_PixelRepresentation, "PixelRepresentation", &L.pixel_rep, &st))
		return st;
	if (L.rows == 0 || L.cols == 0)
		return bad("DICOM image is %u x %u (Rows x Columns): empty", L.rows, L.cols);
	if ((int64_t)L.rows * L.cols > max_pixels)
		return bad("DICOM image is %u x %u (Columns x Rows) = %lld pixels, over the limit of %lld",
			   L.cols, L.rows, (long long)L.rows * L.cols, (long long)max_pixels);
	if (L.bits_alloc != 8 && L.bits_alloc != 16)
		return bad("DICOM BitsAllocated (0028,0100) %u is not supported (8 or 16)", L.bits_alloc);
	if (L.bits_stored < 1 || L.bits_stored > L.bits_alloc || L.high_bit >= L.bits_alloc ||
	    L.high_bit + 1 < L.bits_stored)
		return bad("DICOM BitsStored %u / HighBit %u do not fit BitsAllocated %u", L.bits_stored,
			   L.high_bit, L.bits_alloc);
	if (L.pixel_rep > 1)
		return bad("DICOM PixelRepresentation (0028,0103) is %u (0 or 1)", L.pixel_rep);
	if (ds->findAndGetOFString(DCM_PhotometricInterpretation, L.photometric).bad() ||
	    L.photometric.empty())
		return bad("DICOM attribute PhotometricInterpretation (0028,0004) is missing");
	if (L.spp == 3 && !ds->findAndGetUint16(DCM_PlanarConfiguration, L.planar).good())
		return bad("DICOM attribute PlanarConfiguration (0028,0006) is missing");
	if (L.spp != 1 && L.spp != 3)
		return bad("DICOM SamplesPerPixel (0028,0002) %u is not supported (1 or 3)", L.spp);
	if (L.planar > 1)
		return bad("DICOM PlanarConfiguration (0028,0006) is %u (0 or 1)", L.planar);
	if (L.spp == 3 && L.bits_alloc != 8)
		return bad("DICOM colour with BitsAllocated %u is not supported (8 only)", L.bits_alloc);
	if ((uint64_t)L.rows * L.cols * L.spp * (L.bits_alloc / 8) > INT32_MAX)
		return bad("DICOM image of %u x %u x %u samples is too large", L.cols, L.rows, L.spp);

	// One frame: the uncompressed value in place (DCMTK keeps 16-bit words in host order), or
	// decoded by DCMTK's codec into our buffer.
	Uint32 frame_size = 0;
	if (pix->getUncompressedFrameSize(ds, frame_size).bad() || frame_size == 0)
		return bad("DICOM pixel layout is inconsistent (Rows, Columns, SamplesPerPixel, Bits)");
	if (!xf.isEncapsulated() && pix->getLength() < frame_size)
		return bad("DICOM PixelData (7FE0,0010) is %lu bytes, the image needs %lu: truncated",
			   (unsigned long)pix->getLength(), (unsigned long)frame_size);
	const uint8_t *frame = NULL;
	std::unique_ptr<uint8_t[]> decoded;
	OFString cm = L.photometric;
	if (!xf.isEncapsulated()) {
		Uint8 *b = NULL;
		Uint16 *w = NULL;
		if (L.bits_alloc == 8 ? pix->getUint8Array(b).good() : pix->getUint16Array(w).good())
			frame = L.bits_alloc == 8 ? b : (const uint8_t *)w;
	}
	if (!frame && !xf.isEncapsulated())
		return bad("DICOM PixelData (7FE0,0010) has VR %s; uncompressed pixel data must be OB or OW",
			   DcmVR(pix->getVR()).getVRName());
	if (!frame && (st = xfer == EXS_RLELossless ? check_rle_frame(pix, xfer, L)
						      : check_jpeg_frame(pix, xfer, L)) != GS_OK)
		return st;
	if (!frame) {
		decoded.reset(new uint8_t[(size_t)frame_size + 1]); // + pad byte to even length
		Uint32 start_fragment = 0;
		rc = pix->getUncompressedFrame(ds, 0, start_fragment, decoded.get(), frame_size + 1, cm);
		if (rc.bad())
			return bad("DICOM pixel data could not be decoded (%s, %s)", xf.getXferName(),
				   rc.text());
		frame = decoded.get();
		if (cm.empty())
			cm = L.photometric;
	}

	const size_t npx = (size_t)L.rows * L.cols;
	uint8_t *rgb = (uint8_t *)malloc(npx * 3);
	if (!rgb)
		return gs_errorf(GS_ERR_NOMEM, "DICOM: out of memory for %u x %u RGB", L.cols, L.rows);
	if (L.spp == 1 && (cm == "MONOCHROME1" || cm == "MONOCHROME2"))
		st = decode_grey(ds, L, cm, frame, o, rgb);
	else if (L.spp == 3 && (cm == "RGB" || cm == "YBR_FULL"))
		st = decode_colour(L, cm, frame, o, rgb);
	else
		st = bad("DICOM PhotometricInterpretation %s with SamplesPerPixel %u is not supported "
			 "(MONOCHROME1, MONOCHROME2, RGB, YBR_FULL)", safe(cm), L.spp);
	if (st != GS_OK) {
		free(rgb);
		return st;
	}
	out->w = L.cols;
	out->h = L.rows;
	out->px = rgb;
	return GS_OK;
}

} // namespace

extern "C" enum gs_status gs_dicom_decode(const void *data, size_t n, const struct gs_image_opts *o,
					  struct gs_image_rgb8 *out)
{
	out->w = out->h = 0;
	out->px = NULL;
	try {
		return decode(data, n, o, out);
	} catch (const std::bad_alloc &) {
		return gs_errorf(GS_ERR_NOMEM, "DICOM: out of memory");
	} catch (...) {
		return gs_errorf(GS_ERR_INTERNAL, "DICOM: unexpected exception in DCMTK");
	}
}
