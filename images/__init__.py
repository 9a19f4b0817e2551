"""The image builder: one recipe per board, the build, and the QEMU harness the image tests boot with."""
