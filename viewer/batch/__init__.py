"""Cohort batches: the heatmap, overlay and summary of every slide in a folder, on Dask distributed.

``histoviewer batch INPUT... --out OUTDIR`` runs the same whole-slide engine as ``histoviewer
heatmap`` (:func:`viewer.heatmap.slide_run.run_to_store`), spread over the worker processes of a
Dask cluster: a :class:`distributed.LocalCluster` on one machine, or any running cluster by its
scheduler address. The modules, each with one job:

- :mod:`~viewer.batch.inputs`: which slides (files, folders, list files) and which output folder
  each one gets (distinct folders for equal file names);
- :mod:`~viewer.batch.cluster`: start or connect to the cluster; the worker plugin that caps
  TensorFlow's threads; the per-worker model cache;
- :mod:`~viewer.batch.tasks`: what runs on a worker: plan a slide, compute groups of store
  chunks, finalise a slide (statistics, overlay PNG, GeoJSON);
- :mod:`~viewer.batch.summary`: ``summary.csv``/``summary.json`` and each slide's record;
- :mod:`~viewer.batch.progress`: the progress line over slides and tissue area;
- :mod:`~viewer.batch.run`: the client's loop tying them together (resume, failures, Ctrl+C).
"""
