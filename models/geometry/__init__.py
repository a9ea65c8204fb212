"""Geometry model parts (VGGT / PAGE-4D family): prediction heads, pose encoding.

Modules are imported from their own files (``models.geometry.heads``, ``models.geometry.pose_encoding``); this
package file stays empty so that adding a module never touches it.
"""
