"""Exports of whole slides and regions: overlay figures at any downsample (PNG/JPEG in memory,
tiled pyramidal TIFF block by block) and tumour regions as QuPath GeoJSON. Qt-free.

``render``: the slide read at a downsample with the overlay painted on, block by block.
``tiff_writer``: a tiled pyramidal TIFF written tile by tile from a renderer.
``figure``: one call that writes an overlay file of any supported type (CLI and GUI use it).
``geojson``: thresholded heatmap -> polygons (and optional tiles) in level-0 pixels.
"""
