"""The comparison: each engine's modules side by side, and the tutorial's getPage lessons.

``pairs`` names what to compare (a module of one engine beside its namesakes),
``render`` lays it out for a terminal of any width, ``html`` writes one page,
and ``getpage``/``getpage_twisted`` are the tutorial's getPage lessons written
both ways. Nothing here imports Twisted: the source is read as text.
"""
