"""Stage one: decode a video, cut its views, run the adapted SD over them and write the features (also
stage zero, adapting the Controller). The only part of the library that imports diffusers."""
