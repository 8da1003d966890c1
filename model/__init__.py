"""Training-side package: synthetic data, preprocessing, the CNN+LSTM network and its bundle.

It never imports :mod:`triage`.
"""
