"""Offline speech for the voice service: audio in and out, recognition (ASR) and synthesis (TTS).

Both engines ship inside PyPI wheels, so nothing is downloaded at run time: PocketSphinx
(`pocketsphinx`: an en-US acoustic model, a general language model, the CMU dictionary) and
eSpeak NG (`espeakng-loader`: libespeak-ng and its data). Each sits behind the small interface of
backends.py, so either can be swapped without touching the service.
"""
