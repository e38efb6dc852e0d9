"""The glossary: every term the page uses, in a side panel a click away from anywhere on it."""

from __future__ import annotations

import gradio as gr

TERMS = {
    "x_t": "The noisy image at timestep t: the data plus Gaussian noise, more of it as t grows (t = 999 is pure "
           "noise). It is what the U-Net sees at each step of the reverse process.",
    "ε̂ (epsilon-hat)": "The noise the U-Net predicts is in x_t. The sampler removes a part of it at each step.",
    "x̂0 (x-zero-hat)": "The clean image implied by x_t and ε̂: the network's current guess of the finished sample. "
                        "At the first step it is the network's first guess from pure noise.",
    "Reverse process": "Sampling: from pure noise (t = 999) down to t = 0, one U-Net call per step. Every plot here "
                       "runs left to right in this order.",
    "Guidance": "Classifier-free guidance: the U-Net runs twice per step, with the digit and with the null label, and "
                "the difference is amplified. 1 = plain conditional, higher = more digit-like, less varied.",
    "Null label": "The extra class the model was trained with in place of a digit (dropped labels): it asks for "
                  "\"any digit\". Unconditional runs and guidance use it.",
    "Skip connection": "The encoder's feature map at a resolution, handed across the U to the decoder at the same "
                       "resolution and concatenated there. Scale 0 cuts it; above 1 amplifies it.",
    "Attention": "Self-attention at a level: every position looks at every other, so strokes far apart can agree. "
                 "Switched off, the site's residual path alone flows on.",
    "Time embedding": "How the U-Net is told t: a sinusoidal code of t, passed through a small MLP and added in every "
                      "residual block. Hidden, the network must guess the noise level from the picture.",
    "FreeU b / s": "FreeU's two knobs per decoder stage: b scales half of the decoder's own (backbone) channels, s "
                   "scales the lowest spatial frequencies of the skip joining there.",
    "h-space": "The bottleneck's feature map (the U's lowest point). Its principal directions over many samples can "
               "be added to steer what is drawn.",
    "PCA-RGB": "A feature map's channels reduced to their three principal components, shown as red, green and blue: "
               "pixels with similar feature vectors get similar colours.",
    "Diverging colour map": "Signed values (ε̂, A − B, feature maps): blue below zero, white at zero, red above, over a "
                            "symmetric range the legend states.",
    "Pixel space": "These models denoise the 28×28 pixels themselves: no VAE encodes or decodes them, so what you see "
                   "is exactly what the U-Net made.",
}


def build_glossary() -> gr.Sidebar:
    with gr.Sidebar(label="Glossary", open=False, position="right", elem_id="glossary") as sidebar:
        gr.Markdown("## Glossary\n" + "\n".join(f"**{term}**: {meaning}\n" for term, meaning in TERMS.items()))
    return sidebar
