"""The offline world: a seeded procedural image generator with its own tasks, captions and templates.

Why it exists: no weights or datasets can be downloaded on our machines, so the demo, the tests and every
benchmark run on this world and on the two tiny backbones trained on it (``world:clip``, ``world:mae``).

- ``world.json``   the vocabulary as data: 24 shapes (4 of them rarely named in captions), 8 colours, 6 textures,
                   3 sizes, a 3x3 grid of positions, 5 backgrounds, 5 styles the backbones saw and 2 held out
                   (sketch, blueprint), and hand-crafted templates grouped by style.
- ``render.py``    scene -> 32 px RGB image, deterministic in the scene.
- ``scenes.py``    seeded scene sampling with pinned attributes, and the captions of the alignment data.
- ``tasks.py``     named tasks, registered as datasets ``world-<task>``: ``object`` (24-way, five seen styles),
                   ``object-<style>`` for each of the 7 styles (style shift: same class names), ``texture``,
                   ``colour``, ``size``, ``style``, and the structured ``position`` and ``count``.
- ``pretrain.py``  the pretraining pool of the shipped backbones (its own seeds, disjoint from task splits).

Head-room for prompt learning is designed in, not hoped for: the default template names no style (the
``object-neon`` images are not photos), the rare shapes' names are seldom in captions (class-specific context or
a linear head can fix what shared context cannot), texture is visible but seldom described, and the two held-out
styles are a real domain shift. ``defaults.json`` names the demo's task and backbone.
"""
