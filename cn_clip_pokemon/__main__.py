import sys

from cn_clip_pokemon.cli import main

sys.exit(main())
