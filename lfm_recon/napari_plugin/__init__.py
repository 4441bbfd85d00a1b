"""napari plugin (npe2; ``pip install 'lfm_recon[napari]'``).

* Reader: the volume outputs of ``lfm-recon reconstruct`` (.h5, .tif, a
  folder of per-frame TIFFs, .ome.zarr) open as one image layer (t, z, y, x)
  with the voxel size in µm as its scale and z in µm from the native focal
  plane (z > 0 farther from the objective) as its depth axis.
* Widget "Reconstruct light field": reconstructs the selected image layer
  (a rectified light field (Y, X), or frames (T, Y, X)) with a PSF bank
  (solvers) or a model file (the network or, with its own PSF, the
  solvers), in a worker thread with progress, and adds the volume as a
  new layer.

The manifest is ``napari.yaml`` beside this file.
"""
