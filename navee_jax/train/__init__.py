"""Metric learning: the train step and the method every embedding loss trains with."""
