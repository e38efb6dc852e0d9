"""U-Net Diffusion Playground: `python app.py` serves the page (models from $PLAYGROUND_WEIGHTS, default weights/).

The page is built by explainer.page; this file is the entry point a Hugging Face Space runs."""

from explainer.page import build_demo, serve


def main():
    serve(build_demo())


if __name__ == "__main__":
    main()
