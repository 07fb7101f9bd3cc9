"""Full-reference IQA benchmarks read in the layouts of their official distributions.

Each loader returns an :class:`IQADataset`: a list of :class:`RatedPair` (reference file, distorted file, human score,
distortion type) plus the direction of the score. Files are located by the names the score files give (never by sort
order), case-insensitively, because the archives mix ``.BMP`` and ``.bmp``. Files needed (everything else in the
archives is ignored):

=============  ================================================================  ==========================
dataset        files                                                             score (direction)
=============  ================================================================  ==========================
TID2013        ``mos_with_names.txt``, ``reference_images/I01.BMP``...,          MOS 0-9, higher = better
               ``distorted_images/i01_01_1.bmp``...
KADID-10k      ``dmos.csv`` (``dist_img,ref_img,dmos,var``), ``images/``         "dmos" 1-5, **higher =
                                                                                 better** despite the name
CSIQ           ``src_imgs/<image>.png``, ``dst_imgs/<type>/<image>.<TYPE>.<lev>  DMOS 0-1, lower = better
               .png``, and the ``all_by_image`` sheet of ``csiq.DMOS.xlsx``
               exported as ``csiq.DMOS.csv`` (or the ``.xlsx`` with openpyxl)
LIVE r2        ``refimgs/``, ``jp2k/ jpeg/ wn/ gblur/ fastfading/`` (``img<k>     DMOS, lower = better
               .bmp``), ``refnames_all.mat`` and ``dmos_realigned.mat`` (or
               ``dmos.mat``); needs scipy
PIPAL          ``Train_Ref/A0001.bmp``, ``Train_Dis/A0001_00_00.bmp``,           ELO, higher = better
               ``Train_Label/*.txt`` (``A0001_00_00.bmp,1447.6`` per line)
CSV            ``ref,dist,score[,type]`` (paths relative to the file)            you say which
=============  ================================================================  ==========================

References: Ponomarenko et al., "Image database TID2013", Signal Processing: Image Communication 30, 2015;
Lin, Hosu & Saupe, "KADID-10k", QoMEX 2019; Larson & Chandler, "Most apparent distortion" (CSIQ), J. Electron.
Imaging 19(1), 2010; Sheikh, Sabir & Bovik (LIVE release 2), IEEE TIP 15(11), 2006; Gu et al., "PIPAL", ECCV 2020.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["RatedPair", "IQADataset", "load_tid2013", "load_kadid10k", "load_csiq", "load_live", "load_pipal",
           "load_rated_csv", "IQA_LOADERS"]

PathLike = str | os.PathLike[str]

TID2013_TYPES = {
    "01": "additive Gaussian noise", "02": "additive noise in colour components", "03": "spatially correlated noise",
    "04": "masked noise", "05": "high-frequency noise", "06": "impulse noise", "07": "quantization noise",
    "08": "Gaussian blur", "09": "image denoising", "10": "JPEG", "11": "JPEG2000", "12": "JPEG transmission errors",
    "13": "JPEG2000 transmission errors", "14": "non-eccentricity pattern noise",
    "15": "local block-wise distortions", "16": "mean shift", "17": "contrast change",
    "18": "change of colour saturation", "19": "multiplicative Gaussian noise", "20": "comfort noise",
    "21": "lossy compression of noisy images", "22": "colour quantization with dither",
    "23": "chromatic aberrations", "24": "sparse sampling and reconstruction",
}
KADID_TYPES = {
    "01": "Gaussian blur", "02": "lens blur", "03": "motion blur", "04": "colour diffusion", "05": "colour shift",
    "06": "colour quantization", "07": "colour saturation 1", "08": "colour saturation 2", "09": "JPEG2000",
    "10": "JPEG", "11": "white noise", "12": "white noise in colour component", "13": "impulse noise",
    "14": "multiplicative noise", "15": "denoise", "16": "brighten", "17": "darken", "18": "mean shift",
    "19": "jitter", "20": "non-eccentricity patch", "21": "pixelate", "22": "quantization", "23": "colour block",
    "24": "high sharpen", "25": "contrast change",
}
#: CSIQ ``dst_idx`` -> folder under ``dst_imgs`` (also the type token of the file names, in some capitalisation).
CSIQ_FOLDERS = {1: "awgn", 2: "jpeg", 3: "jpeg2000", 4: "fnoise", 5: "blur", 6: "contrast"}
_CSIQ_TYPE_NAMES = {"noise": "awgn", "awgn": "awgn", "jpeg": "jpeg", "jpeg2000": "jpeg2000", "fnoise": "fnoise",
                    "blur": "blur", "contrast": "contrast"}
#: LIVE release 2: the distortion folders in the order of ``dmos.mat`` and their image counts.
LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


@dataclass(frozen=True)
class RatedPair:
    """One rated distorted image.

    Attributes:
        ref: reference image file.
        dist: distorted image file.
        score: the human score as the dataset ships it (see :attr:`IQADataset.higher_is_better`).
        dist_type: distortion type (a readable name where the dataset defines one).
        ref_name: the reference's name (groups the pairs of one reference).
    """

    ref: Path
    dist: Path
    score: float
    dist_type: str
    ref_name: str


class IQADataset(Sequence[RatedPair]):
    """A full-reference IQA set: rated pairs and the direction of their scores.

    Args:
        name: dataset name (``"kadid10k"``...).
        root: its folder.
        pairs: the rated pairs.
        higher_is_better: True for MOS-like scores (higher = better quality), False for DMOS-like ones.
        score_name: what the score is (``"MOS"``, ``"DMOS"``, ``"ELO"``...), for the report.
    """

    def __init__(self, name: str, root: PathLike, pairs: Sequence[RatedPair], higher_is_better: bool,
                 score_name: str) -> None:
        if not pairs:
            raise ValueError(f"{name}: no rated pairs found under {root}")
        self.name, self.root, self.pairs = name, Path(root), list(pairs)
        self.higher_is_better, self.score_name = bool(higher_is_better), score_name

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> RatedPair:  # type: ignore[override]
        return self.pairs[index]

    def __iter__(self) -> Iterator[RatedPair]:
        return iter(self.pairs)

    def quality(self) -> np.ndarray:
        """Scores oriented so that higher = better quality for every dataset (DMOS negated)."""
        scores = np.array([p.score for p in self.pairs], dtype=np.float64)
        return scores if self.higher_is_better else -scores

    def check_files(self) -> None:
        """Raise ``FileNotFoundError`` naming the first missing image."""
        for pair in self.pairs:
            for path in (pair.ref, pair.dist):
                if not path.is_file():
                    raise FileNotFoundError(f"{self.name}: image {path} listed in the score file is missing; extract "
                                            f"the complete archive under {self.root}")

    def __repr__(self) -> str:
        return (f"IQADataset({self.name!r}, pairs={len(self)}, score={self.score_name}, "
                f"higher_is_better={self.higher_is_better})")


class _Folder:
    """Case-insensitive file lookup in one folder (the archives mix ``.BMP``/``.bmp`` and ``AWGN``/``awgn``)."""

    def __init__(self, folder: Path, dataset: str) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(f"{dataset}: folder {folder} is missing; point the loader at the extracted "
                                    "dataset root (see lipsim_metric.evaluation.iqa_datasets for the layout)")
        self.folder, self.dataset = folder, dataset
        self.files = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}

    def find(self, name: str) -> Path:
        path = self.files.get(name.lower())
        if path is None:
            raise FileNotFoundError(f"{self.dataset}: {self.folder / name} (named in the score file) is missing; "
                                    "extract the complete archive")
        return path


def _score_file(path: Path, dataset: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: score file {path} is missing; the root must be the folder that holds "
                                "it (see lipsim_metric.evaluation.iqa_datasets for the files each dataset needs)")
    return path


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"{where}: the score is {text!r}; every score must be finite")
    return value


def load_tid2013(root: PathLike) -> IQADataset:
    """TID2013 (3,000 pairs; also reads TID2008's identical layout). MOS higher = better.

    ``mos_with_names.txt`` holds ``<MOS> <name>`` per line, e.g. ``5.51429 i01_01_1.bmp``: reference 01, distortion
    type 01, level 1; the reference is ``reference_images/I01.BMP``.
    """
    base = Path(root)
    index = _score_file(base / "mos_with_names.txt", "TID2013")
    refs, dists = _Folder(base / "reference_images", "TID2013"), _Folder(base / "distorted_images", "TID2013")
    pairs = []
    for line_no, line in enumerate(index.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{index}, line {line_no}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected '<MOS> <file name>', got {line!r}")
        mos, name = _number(fields[0], where), fields[1]
        parts = Path(name).stem.split("_")
        if len(parts) != 3 or not parts[0][1:].isdigit():
            raise ValueError(f"{where}: {name!r} is not a TID file name like i01_01_1.bmp")
        ref_id, type_id = parts[0][1:], parts[1]
        ref = refs.find(f"I{ref_id}{Path(name).suffix}")
        pairs.append(RatedPair(ref, dists.find(name), mos, TID2013_TYPES.get(type_id, f"type {type_id}"),
                               f"I{ref_id}"))
    return IQADataset("tid2013", base, pairs, higher_is_better=True, score_name="MOS")


def _read_table(path: Path, required: Sequence[str], dataset: str) -> list[dict[str, str]]:
    """Rows of a CSV whose header is the first line holding every ``required`` column (title rows are skipped)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    for at, row in enumerate(rows):
        header = [c.strip().lower() for c in row]
        if all(c in header for c in required):
            out = []
            for values in rows[at + 1:]:
                if any(v.strip() for v in values):
                    out.append({h: v.strip() for h, v in zip(header, values, strict=False)})
            return out
    raise ValueError(f"{dataset}: {path} has no header row with the columns {list(required)}")


def load_kadid10k(root: PathLike) -> IQADataset:
    """KADID-10k (10,125 pairs). ``dmos.csv``: ``dist_img,ref_img,dmos,var``; the "dmos" column is a mean opinion
    score from 1 (bad) to 5 (excellent), so **higher = better** (the KADID-10k paper, Sec. 3)."""
    base = Path(root)
    index = _score_file(base / "dmos.csv", "KADID-10k")
    images = _Folder(base / "images", "KADID-10k")
    pairs = []
    for line_no, row in enumerate(_read_table(index, ("dist_img", "ref_img", "dmos"), "KADID-10k"), start=2):
        type_id = Path(row["dist_img"]).stem.split("_")[1] if row["dist_img"].count("_") >= 2 else "?"
        pairs.append(RatedPair(images.find(row["ref_img"]), images.find(row["dist_img"]),
                               _number(row["dmos"], f"{index}, line {line_no}"),
                               KADID_TYPES.get(type_id, f"type {type_id}"), Path(row["ref_img"]).stem))
    return IQADataset("kadid10k", base, pairs, higher_is_better=True, score_name="DMOS (1-5, higher = better)")


def _csiq_rows(base: Path) -> tuple[Path, list[dict[str, str]]]:
    required = ("image", "dst_idx", "dst_type", "dst_lev", "dmos")
    for name in ("csiq.DMOS.csv", "csiq_dmos.csv", "csiq.dmos.csv"):
        if (base / name).is_file():
            return base / name, _read_table(base / name, required, "CSIQ")
    xlsx = base / "csiq.DMOS.xlsx"
    if not xlsx.is_file():
        raise FileNotFoundError(f"CSIQ: neither {base / 'csiq.DMOS.csv'} nor {xlsx} exists; export the sheet "
                                "'all_by_image' of csiq.DMOS.xlsx as csiq.DMOS.csv into the dataset root")
    try:
        import openpyxl
    except ImportError:
        raise ImportError("reading csiq.DMOS.xlsx needs openpyxl (pip install openpyxl); or export its sheet "
                          "'all_by_image' as csiq.DMOS.csv into the dataset root") from None
    book = openpyxl.load_workbook(xlsx, read_only=True, data_only=True)
    sheet = book["all_by_image"] if "all_by_image" in book.sheetnames else book.worksheets[0]
    table = [["" if v is None else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
              for v in row] for row in sheet.iter_rows(values_only=True)]
    for at, row in enumerate(table):
        header = [c.strip().lower() for c in row]
        if all(c in header for c in required):
            return xlsx, [{h: v.strip() for h, v in zip(header, r, strict=False)} for r in table[at + 1:]
                          if any(v.strip() for v in r)]
    raise ValueError(f"CSIQ: no header row with the columns {list(required)} in {xlsx}")


def load_csiq(root: PathLike) -> IQADataset:
    """CSIQ (866 pairs). Scores: the ``all_by_image`` sheet of ``csiq.DMOS.xlsx`` (columns ``image, dst_idx,
    dst_type, dst_lev, dmos_std, dmos``), read from its CSV export ``csiq.DMOS.csv`` or, with openpyxl, from the
    ``.xlsx``. DMOS in [0, 1], lower = better. ``dst_idx`` 1-6 selects ``dst_imgs/{awgn,jpeg,jpeg2000,fnoise,blur,
    contrast}/``; the file is ``<image>.<TYPE>.<dst_lev>.png`` (e.g. ``1600.AWGN.1.png``)."""
    base = Path(root)
    index, rows = _csiq_rows(base)
    refs = _Folder(base / "src_imgs", "CSIQ")
    folders: dict[str, _Folder] = {}
    pairs = []
    for line_no, row in enumerate(rows, start=2):
        where = f"{index}, row {line_no}"
        image = row["image"]
        idx = row["dst_idx"]
        if idx.isdigit() and int(idx) in CSIQ_FOLDERS:
            folder = CSIQ_FOLDERS[int(idx)]
        else:
            folder = _CSIQ_TYPE_NAMES.get(row["dst_type"].lower().replace(" ", ""), "")
            if not folder:
                raise ValueError(f"{where}: unknown distortion dst_idx={idx!r} dst_type={row['dst_type']!r}")
        level = row["dst_lev"].split(".")[0]
        if folder not in folders:
            folders[folder] = _Folder(base / "dst_imgs" / folder, "CSIQ")
        pairs.append(RatedPair(refs.find(f"{image}.png"), folders[folder].find(f"{image}.{folder}.{level}.png"),
                               _number(row["dmos"], where), folder, image))
    return IQADataset("csiq", base, pairs, higher_is_better=False, score_name="DMOS (0-1, lower = better)")


def _mat_strings(values: np.ndarray) -> list[str]:
    out = []
    for item in np.asarray(values, dtype=object).reshape(-1):
        while isinstance(item, np.ndarray):
            item = item.reshape(-1)[0]
        out.append(str(item).strip())
    return out


def load_live(root: PathLike, dmos_file: str = "auto") -> IQADataset:
    """LIVE release 2 (779 distorted images; the 203 reference copies, ``orgs == 1``, are dropped as usual).

    ``dmos_realigned.mat`` (``dmos_new``, ``orgs``; the realigned scores of the LIVE authors) is used when present
    and ``dmos_file="auto"``; ``dmos_file="dmos.mat"`` (``dmos``, ``orgs``) selects the original scores. Entry ``k``
    of the 982 is image ``img<j>.bmp`` of the folders ``jp2k`` (227), ``jpeg`` (233), ``wn``, ``gblur`` and
    ``fastfading`` (174 each), in that order; ``refnames_all.mat`` names its reference in ``refimgs/``. Lower DMOS
    = better. Reading ``.mat`` files needs scipy (``pip install scipy``).
    """
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("LIVE's score files are MATLAB .mat files; reading them needs scipy (pip install scipy)"
                          ) from None
    base = Path(root)
    if dmos_file == "auto":
        dmos_file = "dmos_realigned.mat" if (base / "dmos_realigned.mat").is_file() else "dmos.mat"
    if dmos_file not in ("dmos.mat", "dmos_realigned.mat"):
        raise ValueError(f"dmos_file must be 'auto', 'dmos.mat' or 'dmos_realigned.mat', got {dmos_file!r}")
    scores_mat = loadmat(_score_file(base / dmos_file, "LIVE"))
    key = "dmos_new" if dmos_file == "dmos_realigned.mat" else "dmos"
    if key not in scores_mat or "orgs" not in scores_mat:
        raise ValueError(f"LIVE: {base / dmos_file} lacks the variables {key!r} and 'orgs'")
    dmos = np.asarray(scores_mat[key], dtype=np.float64).reshape(-1)
    orgs = np.asarray(scores_mat["orgs"]).reshape(-1)
    names = _mat_strings(loadmat(_score_file(base / "refnames_all.mat", "LIVE"))["refnames_all"])
    expected = sum(n for _, n in LIVE_FOLDERS)
    if not len(dmos) == len(orgs) == len(names) == expected:
        raise ValueError(f"LIVE: expected {expected} entries in {dmos_file} and refnames_all.mat, got {len(dmos)}, "
                         f"{len(orgs)} and {len(names)}")
    refs = _Folder(base / "refimgs", "LIVE")
    pairs, k = [], 0
    for folder, count in LIVE_FOLDERS:
        files = _Folder(base / folder, "LIVE")
        for j in range(1, count + 1):
            if not orgs[k]:
                pairs.append(RatedPair(refs.find(names[k]), files.find(f"img{j}.bmp"), float(dmos[k]), folder,
                                       Path(names[k]).stem))
            k += 1
    return IQADataset("live", base, pairs, higher_is_better=False, score_name=f"DMOS ({dmos_file}, lower = better)")


def load_pipal(root: PathLike, split: str = "Train") -> IQADataset:
    """PIPAL (NTIRE 2021/2022 release; the ``Train`` split has 23,200 labelled pairs). ELO, higher = better.

    ``<split>_Label/*.txt`` lines are ``A0001_00_00.bmp,1447.6``; the reference is ``<split>_Ref/A0001.bmp`` (the
    first 5 characters of the name) and the distortion type the second field of the name (``00``).
    """
    base = Path(root)
    label_dir = base / f"{split}_Label"
    if not label_dir.is_dir():
        raise FileNotFoundError(f"PIPAL: {label_dir} is missing; the root must hold {split}_Ref/, {split}_Dis/ and "
                                f"{split}_Label/")
    refs, dists = _Folder(base / f"{split}_Ref", "PIPAL"), _Folder(base / f"{split}_Dis", "PIPAL")
    pairs = []
    for label in sorted(label_dir.glob("*.txt")):
        for line_no, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            name, _, value = line.partition(",")
            name = name.strip()
            where = f"{label}, line {line_no}"
            if name.count("_") != 2:
                raise ValueError(f"{where}: {name!r} is not a PIPAL name like A0001_00_00.bmp")
            ref_name = name[:5]
            pairs.append(RatedPair(refs.find(ref_name + Path(name).suffix), dists.find(name),
                                   _number(value.strip(), where), f"type {name.split('_')[1]}", ref_name))
    return IQADataset("pipal", base, pairs, higher_is_better=True, score_name="ELO (higher = better)")


def load_rated_csv(path: PathLike, higher_is_better: bool) -> IQADataset:
    """Your own rated pairs: a CSV with the columns ``ref,dist,score`` and optionally ``type``.

    Paths are relative to the CSV's folder (absolute paths work too). ``higher_is_better`` says whether a larger
    score means better quality (MOS) or worse (DMOS); there is no default, because guessing it flips every sign.
    """
    file = _score_file(Path(path), "CSV")
    folder = file.parent
    pairs = []
    for line_no, row in enumerate(_read_table(file, ("ref", "dist", "score"), "CSV"), start=2):
        ref, dist = folder / row["ref"], folder / row["dist"]
        for p in (ref, dist):
            if not p.is_file():
                raise FileNotFoundError(f"{file}, line {line_no}: image {p} does not exist")
        pairs.append(RatedPair(ref, dist, _number(row["score"], f"{file}, line {line_no}"),
                               row.get("type") or "all", row["ref"]))
    return IQADataset(f"csv:{file.name}", folder, pairs, higher_is_better=higher_is_better,
                      score_name="score (higher = better)" if higher_is_better else "score (lower = better)")


#: ``--dataset NAME:<root>`` names of the full-reference loaders.
IQA_LOADERS = {"tid2013": load_tid2013, "kadid10k": load_kadid10k, "csiq": load_csiq, "live": load_live,
               "pipal": load_pipal}
