import sys

from make_disk_image.repart.cli import main

sys.exit(main())
