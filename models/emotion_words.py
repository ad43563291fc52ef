"""The default emotion vocabulary that back-translation names points of the semantic space with.

Basic and therapy-relevant emotions, in English and German (the encoder maps both into one
space). Users give their own lists with ``--vocabulary`` (a YAML list, or language -> list).
"""
from __future__ import annotations

DEFAULT_VOCABULARY: dict[str, tuple[str, ...]] = {
    "en": ("joy", "happiness", "amusement", "contentment", "pride", "relief", "love", "hope", "interest",
           "surprise", "calm", "sadness", "grief", "loneliness", "fear", "anxiety", "worry", "anger", "rage",
           "frustration", "disgust", "contempt", "shame", "guilt", "embarrassment", "boredom", "confusion",
           "despair", "helplessness", "neutral"),
    "de": ("Freude", "Glück", "Belustigung", "Zufriedenheit", "Stolz", "Erleichterung", "Liebe", "Hoffnung",
           "Interesse", "Überraschung", "Ruhe", "Traurigkeit", "Trauer", "Einsamkeit", "Furcht", "Angst", "Sorge",
           "Ärger", "Wut", "Frustration", "Ekel", "Verachtung", "Scham", "Schuld", "Verlegenheit", "Langeweile",
           "Verwirrung", "Verzweiflung", "Hilflosigkeit", "neutral"),
}


def default_words(languages: tuple[str, ...] = ("en", "de")) -> list[str]:
    """The default vocabulary of ``languages``, in order, without repeats."""
    unknown = [l for l in languages if l not in DEFAULT_VOCABULARY]
    if unknown:
        raise ValueError(f"no default vocabulary for {unknown}; known: {sorted(DEFAULT_VOCABULARY)}")
    return list(dict.fromkeys(w for l in languages for w in DEFAULT_VOCABULARY[l]))
