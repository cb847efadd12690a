"""Recognise new articles: enroll reference photos, predict with an "unknown" decision, embed, export."""

from navee_jax.recognize.api import Prediction, Recognizer
from navee_jax.recognize.gallery import Gallery

__all__ = ["Gallery", "Prediction", "Recognizer"]
