"""The use layer: a trained model put to work. `loader` (`tlflax.load`: a model from a run, a
checkpoint, a file or the hub), `evaluate` (--mode=evaluate), `prediction` (--mode=predict and
`tlflax.predict`), `export` (--mode=export), `convert` (`python -m tlflax.use.convert`).

May import: every layer up to `tlflax.train`; never `tlflax.study` (they are siblings).
"""
