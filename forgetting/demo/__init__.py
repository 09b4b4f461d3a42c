"""The embedded demo corpus: Dutch and German sentences from word lists, spoken by eSpeak NG voices, written in the
Common Voice layout with planted defects. Only the demo stage uses it.

It may import the top of the package and `data`.
"""
