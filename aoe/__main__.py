from aoe.cli import main

main()
