//! The inspector worker's models: a run's checkpoint (or its live parameters at the last
//! evaluation, which the leader sends), looked at through the library's answers.

use crate::{json, refusal};
use chargpt::checkpoint::{self, Checkpoint};
use chargpt::page::inspect::{self as answers, Looked, RunText};
use chargpt::page::{self, Refusal, SampleRequest};
use chargpt::rng::Rng;
use chargpt::sampling::{self, Generator};
use std::collections::HashMap;
use wasm_bindgen::prelude::*;

struct Loaded {
    checkpoint: Checkpoint,
    live: bool,
    /// The run's text when the page has it (an upload); `None`: the text its config records
    /// (the built-in one, or a file this tab cannot read).
    text: Option<String>,
    /// The embeddings' answer for these parameters, once asked.
    embeddings: Option<String>,
}

/// Models this worker has loaded, by run name.
#[wasm_bindgen]
#[derive(Default)]
pub struct Inspector {
    models: HashMap<String, Loaded>,
}

#[wasm_bindgen]
impl Inspector {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Inspector {
        Inspector::default()
    }

    /// Loads run `run`'s parameters from its files' bytes (`config.json`, `model.safetensors`),
    /// `live` when they are a training's at its last evaluation rather than its checkpoint.
    pub fn load(
        &mut self,
        run: &str,
        config: &[u8],
        model: &[u8],
        live: bool,
        text: Option<String>,
    ) -> Result<(), JsValue> {
        let checkpoint = checkpoint::from_bytes(config, model)
            .map_err(|e| refusal(Refusal::conflict(page::one_line(&e))))?;
        self.models.insert(
            run.to_string(),
            Loaded {
                checkpoint,
                live,
                text,
                embeddings: None,
            },
        );
        Ok(())
    }

    /// The step of the parameters loaded for `run`, if any.
    pub fn step(&self, run: &str) -> Option<usize> {
        self.models.get(run).map(|m| m.checkpoint.config.step)
    }

    pub fn forget(&mut self, run: &str) {
        self.models.remove(run);
    }

    /// The answer of `POST|GET /api/runs/RUN/inspect/ENDPOINT` to `body`.
    pub fn answer(&mut self, run: &str, endpoint: &str, body: &str) -> Result<String, JsValue> {
        let loaded = self
            .models
            .get_mut(run)
            .ok_or_else(|| refusal(page::no_checkpoint_yet(run)))?;
        let bytes = body.as_bytes();
        if endpoint == "embeddings" {
            if let Some(done) = &loaded.embeddings {
                return Ok(done.clone());
            }
        }
        let looked = Looked {
            run,
            model: &loaded.checkpoint.model,
            tokenizer: &loaded.checkpoint.tokenizer,
            step: loaded.checkpoint.config.step,
            live: loaded.live,
            text: match &loaded.text {
                Some(text) => RunText::Given(text),
                None => RunText::Recorded(loaded.checkpoint.config.data.as_ref()),
            },
            final_val_loss: loaded.checkpoint.config.final_val_loss,
        };
        let answer = match endpoint {
            "next" => answers::next(&looked, &page::parse_request(bytes).map_err(refusal)?),
            "attention" => {
                answers::attention(&looked, &page::parse_request(bytes).map_err(refusal)?)
            }
            "surprise" => answers::surprise(&looked, &page::parse_request(bytes).map_err(refusal)?),
            "head" => answers::head(&looked, &page::parse_request(bytes).map_err(refusal)?),
            "embeddings" => answers::embeddings(&looked),
            other => Err(Refusal::not_found(format!(
                "no such page or API route: inspect/{other}"
            ))),
        }
        .map(json)
        .map_err(refusal)?;
        if endpoint == "embeddings" {
            loaded.embeddings = Some(answer.clone());
        }
        Ok(answer)
    }

    /// `POST /api/runs/RUN/sample`: draws the request's characters, handing them to `on_text`
    /// a few at a time (every 64 characters) as they are drawn.
    pub fn sample(&self, run: &str, body: &str, on_text: &js_sys::Function) -> Result<(), JsValue> {
        let request: SampleRequest = page::parse_request(body.as_bytes()).map_err(refusal)?;
        request.check().map_err(refusal)?;
        let loaded = self
            .models
            .get(run)
            .ok_or_else(|| refusal(page::no_checkpoint_yet(run)))?;
        let ckpt = &loaded.checkpoint;
        let prompt = sampling::encode_prompt(&ckpt.tokenizer, &request.prompt)
            .map_err(|e| refusal(Refusal::bad_request(page::one_line(&e)).with_field("prompt")))?;
        let mut generator = Generator::new(&ckpt.model, &prompt, request.settings());
        let mut rng = Rng::new(request.seed);
        let mut chunk = String::new();
        for i in 0..request.tokens {
            let id = generator.next_token(&mut rng);
            if let Ok(c) = ckpt.tokenizer.decode_one(id) {
                chunk.push(c);
            }
            if i + 1 == request.tokens || chunk.chars().count() >= 64 {
                on_text.call1(&JsValue::NULL, &JsValue::from_str(&chunk))?;
                chunk.clear();
            }
        }
        Ok(())
    }
}
