#!/usr/bin/env python3
"""Write the tokenizer parity corpus deterministically (seeded; same bytes on every run).

usage: gen_corpus.py tokenizer.json corpus.jsonl decode_cases.jsonl
  corpus.jsonl:       one JSON object {"text", "hex" (its UTF-8 bytes)} per line (>= 2000 lines): clinical notes, doses,
                      whitespace runs, digits, emoji (ZWJ), CJK/Arabic/Hindi/Cyrillic,
                      special tokens inside text, byte-fallback characters, empty, very long.
  decode_cases.jsonl: one JSON array of token ids per line, heavy on <0xNN> byte tokens
                      (valid, truncated and impossible UTF-8 runs) for decode/detok parity.
"""
import json
import random
import sys

R = random.Random(20240917)

DRUGS = ["metoprolol", "metoprolol succinate", "lisinopril", "atorvastatin", "metformin", "insulin glargine",
         "apixaban", "warfarin", "furosemide", "hydrochlorothiazide", "amoxicillin-clavulanate", "ceftriaxone",
         "vancomycin", "piperacillin-tazobactam", "levothyroxine", "prednisone", "methylprednisolone",
         "acetaminophen", "ibuprofen", "oxycodone", "hydromorphone", "ondansetron", "pantoprazole",
         "enoxaparin", "heparin", "amiodarone", "diltiazem", "digoxin", "spironolactone", "sacubitril/valsartan",
         "empagliflozin", "semaglutide", "tamsulosin", "sertraline", "quetiapine", "haloperidol", "lorazepam",
         "levetiracetam", "clopidogrel", "aspirin", "nitroglycerin", "albuterol", "tiotropium", "montelukast"]
UNITS = ["mg", "mcg", "g", "units", "mL", "mg/kg", "mEq", "IU", "mg/m²", "µg", "mg/dL"]
ROUTES = ["PO", "IV", "IM", "SC", "SL", "PR", "INH", "NG", "topical"]
FREQ = ["BID", "TID", "QID", "daily", "qHS", "q4h", "q6h PRN pain", "q8h", "weekly", "once", "PRN", "q12h"]
PHRASES = [
    "Patient is a {a} y/o {s} with hx of HTN, T2DM, CKD stage {k}, presenting with SOB x{d} days.",
    "Chief complaint: chest pain radiating to L arm, onset {d}h ago, 7/10, pressure-like.",
    "Vitals: BP {sbp}/{dbp} mmHg, HR {hr} bpm, RR {rr}, SpO2 {o2}% on 2L NC, T {t} °C.",
    "Labs notable for Na {na}, K {kk}, Cl 101, HCO3 22, BUN 34, Cr {cr}, glucose {g}, HbA1c {a1c}%.",
    "CXR: bilateral interstitial opacities; no pneumothorax. ECG: NSR, QTc {qt} ms, no ST changes.",
    "A/P: #1 Acute on chronic HFrEF (EF {ef}%) — diurese w/ furosemide 40 mg IV BID, strict I/O, daily wts.",
    "#2 AKI on CKD: likely prerenal; hold ACEi, trend Cr, renally dose meds (CrCl ~{crcl} mL/min).",
    "Allergies: PCN (rash), sulfa (hives). Code status: Full. Dispo: pending PT/OT eval.",
    "Pt reports N/V/D x2d; denies hematochezia/melena. Abd soft, NT/ND, +BS.",
    "ICD-10: I50.23, N17.9, E11.65; CPT 99223. MRN #{mrn}, DOB 0{m}/1{d}/19{yy}.",
    "Discharge summary: hospital course c/b delirium, resolved w/ reorientation & sleep hygiene.",
    "F/u w/ PCP in 1-2 wks; return precautions reviewed; pt verbalized understanding (teach-back ✓).",
    "Dx: community-acquired pneumonia (CURB-65 = {k}); start ceftriaxone 1 g IV q24h + azithromycin 500 mg PO.",
    "Wt {w} kg, Ht 1{h} cm, BMI {bmi} kg/m²; I/O +{io} mL/24h.",
]
MULTI = [
    "Пациент 45 лет, жалобы на боль в груди, АД 150/95 мм рт. ст., назначен метопролол 25 мг 2 раза в день.",
    "患者男性，65岁，高血压病史10年，服用氨氯地平5毫克每日一次。",
    "患者は72歳女性、2型糖尿病で、メトホルミン500mgを1日2回服用中。",
    "환자는 58세 남성으로 흉통을 호소하며 아스피린 100mg을 복용 중입니다.",
    "المريض يبلغ من العمر ٥٥ عامًا ويعاني من ارتفاع ضغط الدم، ويتناول ليسينوبريل ١٠ ملغ يوميًا.",
    "रोगी 60 वर्ष का पुरुष है, मधुमेह से पीड़ित, मेटफॉर्मिन 500 मि.ग्रा. दिन में दो बार।",
    "Ο ασθενής παρουσιάζει πυρετό 38,5 °C και βήχα.",
    "החולה בן 70 עם אי ספיקת לב, מקבל פורוסמיד 40 מ\"ג.",
    "ผู้ป่วยชายอายุ 50 ปี มีอาการไข้และไอ",
    "Der Patient (78 J.) erhält Ramipril 5 mg 1-0-0; Kreatinin ↑, eGFR ↓.",
    "Paciente con disnea, saturación 88 %, se inicia oxígeno a 2 L/min — evolución favorable.",
    "Bệnh nhân nữ 34 tuổi, sốt cao, đau đầu dữ dội.",
    "Hasta 3 gündür öksürük ve ateş şikâyeti ile başvurdu.",
    "Pacjent zgłasza ból w klatce piersiowej; podano nitroglicerynę 0,4 mg s.l.",
    "Ο/Ε: καρδιακοί τόνοι ρυθμικοί — ΗΚΓ: φλεβοκομβικός ρυθμός.",
]
EMOJI = ["😀", "🤒", "💊", "🩺", "🫀", "🧬", "👍🏽", "👩‍⚕️", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸", "🇯🇵", "1️⃣", "❤️‍🔥",
         "🧑🏿‍🔬", "👁️‍🗨️", "🐈‍⬛", "😶‍🌫️", "🫠", "🥲", "✅", "⚠️", "🚑", "🏥", "🦠", "💉"]
SPECIAL = ["<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>",
           "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<unused0>", "<unused94>", "<unused95>",
           "<unused6241>", "<table>", "<tr>", "<td>", "</td>", "</tr>", "</table>", "<start_of_turn", "<unused",
           "<unused99999>", "<end_of_turn >", "<<bos>>", "<0x41>", "<0xE2>", "▁", "▁▁", "▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁"]
# Characters that are (very likely) not pieces: rare planes, private use, control chars.
RARE_RANGES = [(0x0, 0x1F), (0x7F, 0x9F), (0xE000, 0xF8FF), (0x10000, 0x1007F), (0x10330, 0x1034A), (0x12000, 0x1236E),
               (0x13000, 0x1342E), (0x1D100, 0x1D1E8), (0x20000, 0x2A6DF), (0x30000, 0x3134A), (0xF0000, 0xF00FF),
               (0x100000, 0x1000FF), (0xFFF0, 0xFFFD), (0x2FF0, 0x2FFB), (0xA4D0, 0xA4FF), (0x1F10D, 0x1F10F)]


def rare_char():
    lo, hi = R.choice(RARE_RANGES)
    return chr(R.randint(lo, hi))


def any_char():
    while True:
        c = R.randint(0, 0x10FFFF) if R.random() < 0.3 else R.randint(0, 0x3000)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def clinical():
    p = R.choice(PHRASES)
    return p.format(a=R.randint(18, 99), s=R.choice("MF"), k=R.randint(1, 5), d=R.randint(1, 9),
                    sbp=R.randint(90, 200), dbp=R.randint(50, 120), hr=R.randint(40, 150), rr=R.randint(10, 30),
                    o2=R.randint(85, 100), t=round(R.uniform(35.5, 40.5), 1), na=R.randint(125, 150),
                    kk=round(R.uniform(2.8, 6.5), 1), cr=round(R.uniform(0.5, 8), 2), g=R.randint(60, 500),
                    a1c=round(R.uniform(5, 14), 1), qt=R.randint(380, 520), ef=R.randint(10, 65),
                    crcl=R.randint(10, 120), mrn=R.randint(10 ** 6, 10 ** 8), m=R.randint(1, 9), yy=R.randint(30, 99),
                    w=round(R.uniform(40, 180), 1), h=R.randint(40, 99), bmi=round(R.uniform(16, 50), 1),
                    io=R.randint(100, 3000))


def dose():
    return "{} {}{}{} {} {}".format(R.choice(DRUGS), R.choice(["", "", "0."]), R.randint(1, 1000),
                                    R.choice(["", ".5", ""]), R.choice(UNITS), R.choice(ROUTES)) + " " + R.choice(FREQ)


def ws():
    return "".join(R.choice([" ", "  ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u3000", "\u2009"])
                   for _ in range(R.randint(1, 12)))


def piece():
    k = R.random()
    if k < 0.35:
        return clinical()
    if k < 0.5:
        return dose()
    if k < 0.6:
        return R.choice(MULTI)
    if k < 0.68:
        return "".join(R.choice(EMOJI) for _ in range(R.randint(1, 6)))
    if k < 0.76:
        return R.choice(SPECIAL)
    if k < 0.84:
        return "".join(rare_char() for _ in range(R.randint(1, 5)))
    if k < 0.9:
        return str(R.randint(0, 10 ** R.randint(1, 30))) + R.choice(["", ".", ",", "e-5", "%", "/min"])
    if k < 0.95:
        return ws()
    return "".join(any_char() for _ in range(R.randint(1, 20)))


def corpus():
    out = ["", " ", "  ", "\n", "\t", "\n\n\n", "▁", "a", "Hello", " Hello", "Hello ", "metoprolol 25 mg PO BID",
           "<start_of_turn>user\nWhat is hypertension?<end_of_turn>\n<start_of_turn>model\n",
           "<bos><start_of_turn>user\nBe helpful.\n\nHello<end_of_turn>\n<start_of_turn>model\n",
           "<unused94>thought\nThe patient<unused95>Answer", "\u2014", "caf\u00e9 cafe\u0301", "\ufeffBOM",
           "\u200b\u200c\u200d\u2060", "\x00\x01\x02\x7f"]
    # Specials and whitespace runs of every length up to past the longest added run (31).
    for n in range(1, 40):
        out += [" " * n, "\n" * n, "\t" * n, "x" + " " * n + "y", "▁" * n, "\n" * n + "a" + "\t" * n]
    for s in SPECIAL:
        out += [s, "a" + s + "b", " " + s + " ", s + s, "\n" + s + "\n\n"]
    for e in EMOJI:
        out += [e, "Pain " + e + " 8/10"]
    while len(out) < 2300:
        out.append("".join(piece() + (R.choice(["", " ", "\n", ", ", ". "]) if R.random() < 0.7 else "")
                           for _ in range(R.randint(1, 12))))
    # Very long lines: a long note, long whitespace runs, a long random mix (~1 MB total).
    out.append("\n".join(clinical() + " " + dose() for _ in range(2000)))
    out.append(" " * 20000)
    out.append("\n" * 5000 + "end")
    out.append("".join(piece() for _ in range(4000)))
    out.append("".join(rare_char() for _ in range(3000)))
    out.append("9" * 10000)
    return out


def decode_cases(tok_path):
    with open(tok_path, encoding="utf-8") as f:
        vocab = json.load(f)["model"]["vocab"]
    byte = [vocab["<0x%02X>" % b] for b in range(256)]
    n_vocab = max(vocab.values()) + 2  # + <image_soft_token>
    normal = [vocab[p] for p in ["▁the", "▁patient", "▁", "▁▁", "\n", "mg", "<start_of_turn>", "<end_of_turn>",
                                 "<bos>", "a"] if p in vocab]
    cases = []

    def utf8_ids(s):
        return [byte[b] for b in s.encode("utf-8")]

    for _ in range(600):
        seq = []
        for _ in range(R.randint(1, 12)):
            k = R.random()
            if k < 0.3:
                seq += utf8_ids("".join(any_char() for _ in range(R.randint(1, 4))))
            elif k < 0.45:
                ids = utf8_ids(any_char())
                seq += ids[:R.randint(1, len(ids))]  # maybe truncated
            elif k < 0.6:
                seq += [byte[R.randint(0x80, 0xFF)] for _ in range(R.randint(1, 4))]  # mostly impossible
            elif k < 0.85:
                seq.append(R.choice(normal))
            else:
                seq.append(R.randrange(n_vocab))
        cases.append(seq)
    # Byte runs longer than the detokenizer's pending buffer (valid UTF-8 throughout).
    for n in (40, 43, 64, 100):
        cases.append(utf8_ids("".join(chr(R.randint(0x10000, 0x10FFFF) & ~0) if False else "😀" for _ in range(n))))
        cases.append(utf8_ids("€" * n) + [normal[0]] + utf8_ids("é" * n))
    cases.append([])
    return cases


def main():
    tok, corpus_path, cases_path = sys.argv[1:4]
    with open(corpus_path, "w", encoding="utf-8") as f:
        for line in corpus():
            # "hex" carries the exact bytes for C (cJSON strings stop at U+0000).
            f.write(json.dumps({"text": line, "hex": line.encode("utf-8").hex()}, ensure_ascii=True) + "\n")
    with open(cases_path, "w", encoding="utf-8") as f:
        for c in decode_cases(tok):
            f.write(json.dumps(c) + "\n")


if __name__ == "__main__":
    main()
