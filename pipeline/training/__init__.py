"""Training of any model family: data from COCO files (`data`), the loop (`engine`), one run and
what the pretrain / finetune stages share (`runs`)."""
