"""Named hardware targets and their backends (tvm/, c/, hls/)."""
