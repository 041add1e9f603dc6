from make_disk_image.cli import main

raise SystemExit(main())
