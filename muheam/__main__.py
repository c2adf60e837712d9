from muheam.cli import main

main()
