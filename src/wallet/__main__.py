from wallet.cli import app

app()
