from vllm_ascend_rerank.tiny_checkpoint import main

main()
