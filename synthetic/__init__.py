"""Generated videos whose true foreground is known: test, benchmark and demo data, kept out of the pipeline's core
(which only ships the encoder they use, `pipeline.video.write_video`)."""

from synthetic.scenes import MASK_SCENES, MASK_SIZE, Scene, render, texture, write_dataset, write_scene

__all__ = ["MASK_SCENES", "MASK_SIZE", "Scene", "render", "texture", "write_dataset", "write_scene"]
