/* gemmashard DICOM input: one single-frame DICOM image (from memory) to 8-bit RGB, through DCMTK.
 *
 * core/image.c's gs_image_decode calls this for "application/dicom" (or the "DICM" magic at
 * offset 128); it is also callable on its own. Implemented in C++ (core/image_dicom.cc), C API.
 *
 * Accepted: single-frame images, files with or without the preamble / meta header, uncompressed
 * transfer syntaxes (implicit / explicit VR little endian, explicit VR big endian) and the
 * compressed ones DCMTK's Debian build decodes (JPEG baseline / extended / lossless, JPEG-LS,
 * RLE). Monochrome (MONOCHROME1 / MONOCHROME2, BitsAllocated 8 or 16, signed or unsigned, any
 * BitsStored / HighBit) goes through the Modality LUT (Rescale Slope / Intercept) and a VOI window
 * (o->has_window's window, else the file's first Window Center / Width with its VOI LUT Function,
 * else the first VOI LUT Sequence table, else min-max over the image): the VOI LUT function of
 * DICOM PS3.3 C.11.2.1.2 (or the table) to 0..255, MONOCHROME1 inverted, grey replicated to RGB. 8-bit RGB (planar configuration 0 or 1) is passed
 * through; YBR_FULL is converted to RGB.
 *
 * Refused with GS_ERR_INVALID_ARG and a message naming the problem: multi-frame files, transfer
 * syntaxes DCMTK cannot decode (by name and UID), deflate (a decompression bomb risk), missing or
 * short PixelData, BitsAllocated other than 8 / 16, 16-bit colour, Rows x Columns over
 * o->max_pixels (checked before any pixel decoding), more than o->max_bytes, truncated or
 * malformed files, a Modality LUT Sequence, a malformed VOI LUT Sequence. Messages name
 * attributes by keyword and tag only: no value of the header ever reaches a message or a log line
 * except technical ones (transfer syntax, photometric interpretation, bits, sizes, window), and
 * those only when they are plain code strings. DCMTK's own logger is switched off. Thread-safe. */
#ifndef GS_DICOM_H
#define GS_DICOM_H

#include <stddef.h>

#include "gs_image.h"
#include "gs_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Decode data[0..n) (a DICOM file or bare data set) into *out (out->px malloc'd, w*h*3, freed with
 * gs_image_rgb8_free). o may be NULL (defaults). On error *out is left empty (px NULL). */
enum gs_status gs_dicom_decode(const void *data, size_t n, const struct gs_image_opts *o,
			       struct gs_image_rgb8 *out);

#ifdef __cplusplus
}
#endif

#endif
