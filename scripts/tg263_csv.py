"""Regenerate segmenter/data/tg263.csv from the TG-263 workbook HL7 publishes with mCODE (CC0-1.0).

    python3 scripts/tg263_csv.py TG263_Nomenclature_to_SNOMEDCT_Codes_and_Qualifiers.xlsx > segmenter/data/tg263.csv

The workbook (github.com/HL7/fhir-mCODE-ig, input/images/) holds the AAPM TG-263 structure list in three
sheets (mapped to SNOMED CT, unmapped anatomy, unmapped volume terms) with TG-263's own columns
(target type, categories, anatomic group, names, description, FMA ID) and the SNOMED CT code, term and
qualifiers mCODE added. Every row of every sheet is kept, values only trimmed; a name listed twice keeps
its first row. Standard library only (the .xlsx is read as the zip of XML it is).
"""

from __future__ import annotations

import csv
import re
import sys
import zipfile
import xml.etree.ElementTree as ET

NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
COLUMNS = {"B": "target_type", "C": "major_category", "D": "minor_category", "E": "anatomic_group",
           "G": "primary_name", "H": "reverse_name", "I": "description", "J": "fma_id",
           "K": "snomed_code", "L": "snomed_term", "M": "qualifiers"}
SHEETS = {1: "mapped", 2: "unmapped anatomy", 3: "unmapped volume"}


def sheet_rows(book: zipfile.ZipFile, sheet: int) -> list[dict[str, str]]:
    shared = ["".join(t.text or "" for t in si.iter(f"{NS}t"))
              for si in ET.fromstring(book.read("xl/sharedStrings.xml")).findall(f"{NS}si")]
    out = []
    for row in ET.fromstring(book.read(f"xl/worksheets/sheet{sheet}.xml")).iter(f"{NS}row"):
        cells: dict[str, str] = {}
        for cell in row.findall(f"{NS}c"):
            column = re.match(r"[A-Z]+", cell.get("r", "")).group()  # type: ignore[union-attr]
            value = cell.find(f"{NS}v")
            if value is None:
                text = "".join(t.text or "" for t in cell.iter(f"{NS}t"))
            elif cell.get("t") == "s":
                text = shared[int(value.text or 0)]
            else:
                text = value.text or ""
            cells[column] = " ".join(text.split())
        out.append(cells)
    return out[1:]  # the header row


def main(path: str) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([*COLUMNS.values(), "sheet"])
    seen: set[str] = set()
    with zipfile.ZipFile(path) as book:
        for sheet, what in SHEETS.items():
            for cells in sheet_rows(book, sheet):
                name = cells.get("G", "")
                if not name or name in seen:
                    continue
                seen.add(name)
                writer.writerow([cells.get(c, "") for c in COLUMNS] + [what])


if __name__ == "__main__":
    main(sys.argv[1])
